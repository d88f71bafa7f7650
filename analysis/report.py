"""Write the report: Table 1, the paper's Figures 1-6, findings, as Markdown and HTML.

    python analysis/report.py --experiment digits-cnn            # -> runs/digits-cnn/report/
    python analysis/report.py --experiments mnist-cnn cifar10-vgg16   # each, plus runs/combined/
    python analysis/report.py --all --out s3://bucket/bnrep      # every experiment with results

Reads only <out>/<experiment>/results/ (the Parquet tables of sweeps/final.py
and analysis/run.py) and writes <out>/<experiment>/report/:
report.md, report.html (self-contained, opens offline), table1.{md,csv,tex},
fig_*.{png,svg}, findings.json, report_inputs.json. No Ray, no GPU; a few
seconds per experiment on 2 CPU cores.

Exit codes: 0 written, 1 no results (the message names the stage to run) or
the report could not be written, 2 bad arguments (unknown experiment) or
another run writes the results now (its one-writer lock).
"""

from bnrep.flags import exit_process, run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("report", argv)


if __name__ == "__main__":
    exit_process(main())
