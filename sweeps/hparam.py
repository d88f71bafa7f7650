"""Stage 1: Ray Tune hyperparameter sweep, one search per BatchNorm setting.

    python sweeps/hparam.py                                   # digits-cnn, private local Ray
    python sweeps/hparam.py --experiment mnist-cnn --num-samples 16
    ray submit cluster.yaml sweeps/hparam.py -- --experiment cifar10-vgg16 --out s3://bucket/bnrep

Searches learning rate (log-uniform) x momentum (SGD presets) with an ASHA
scheduler. Objective (paper 3.1.1): validation accuracy at the epoch a model
first interpolates, non-interpolating trials ranked below all that do; for
early-stopping presets (paper 3.1.2) the best validation accuracy.

Writes, under <out>/<experiment>/:
    results/hparam_trials/{bn,nobn}.parquet   one row per trial
    hparam/best_hparams.json                  best trial per BatchNorm setting
    hparam/tune/{bn,nobn}/                    Ray Tune state (resumed with Tuner.restore)

digits-cnn on 2 CPU cores: about a minute. A rerun skips finished searches.
"""

from bnrep.flags import exit_process, run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("hparam", argv)


if __name__ == "__main__":
    exit_process(main())
