"""Stage 3: measure every trained model's representations with Ray tasks.

    python analysis/run.py                                    # digits-cnn, private local Ray
    python analysis/run.py --experiment cifar10-vgg16 --gpus-per-task 0.5
    ray submit cluster.yaml analysis/run.py -- --experiment cifar10-vgg16 --out s3://bucket/bnrep

One task per model extracts the post-ReLU representations of a seeded sample
of training images (GPU when the cluster has one) and writes sparsity (paper
eq. 3-4); its outputs are the per-layer N x C reduced representations (eq. 5).
One task per (model, layer) then computes the class-based DBI and the k-means
sweep k = 2..15 with the DBI of each k (paper 3.3).

Writes, under <out>/<experiment>/results/ (one Parquet part per task):
    samples/            purpose, position, index of the training images used
    channel_sparsity/   model x layer x channel
    layer_sparsity/     model x layer
    class_dbi/          model x layer
    kmeans/             model x layer x k

digits-cnn (8 models) on 2 CPU cores: about a minute. A rerun skips parts
that are complete and valid.
"""

from bnrep.flags import exit_process, run_stage


def main(argv: list[str] | None = None) -> int:
    return run_stage("analysis", argv)


if __name__ == "__main__":
    exit_process(main())
