from bnrep.cli import console

console()
