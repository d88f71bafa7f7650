"""The four stages of a study, as library functions Ray can pickle by reference.

    from bnrep.stages import hparam, final, analysis, report
    hparam.run(exp, opts); final.run(exp, opts); analysis.run(exp, opts)
    report.run(opts.out, [exp.name])

Each takes a resolved `Experiment` and `RunOptions` (bnrep.config), never
argparse; the scripts in sweeps/ and analysis/ and the `bnrep` command only
turn flags into those two objects (bnrep.flags).
"""

STAGES = ("hparam", "final", "analysis", "report")  # pipeline order
