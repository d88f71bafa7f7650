"""Stage 2: train the seed x {BatchNorm, no BatchNorm} grid with Ray Tune.

    python sweeps/final.py                                    # digits-cnn, best hparams from stage 1
    python sweeps/final.py --experiment mnist-cnn --paper-hparams
    ray submit cluster.yaml sweeps/final.py -- --experiment cifar10-vgg16 --out s3://bucket/bnrep

Each model trains to its preset's stopping rule, reporting a checkpoint to
Tune every epoch; a failed trial (a node lost) restarts from its last
checkpoint (FailureConfig), an interrupted grid resumes with Tuner.restore.

Writes, under <out>/<experiment>/:
    train/models/<model_id>/model.pt       weights, preset, hparams, metrics
    results/training/<model_id>.parquet    one row per model (schema: bnrep.store)
    results/training_history/<model_id>.parquet   one row per epoch

digits-cnn (4 seeds x 2) on 2 CPU cores: about 2 minutes. A rerun trains
only the models that are missing.
"""

from bnrep.flags import exit_process, run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("final", argv)


if __name__ == "__main__":
    exit_process(main())
