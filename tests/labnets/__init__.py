"""A researcher's own networks, as a package outside bnrep: `--model tests.labnets.nets:wide_cnn`
in the checkout, `--model labnets.nets:wide_cnn` with this folder's parent on PYTHONPATH."""
