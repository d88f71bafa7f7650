"""bnrep: what BatchNorm does to a network's hidden representations.

Reproduces Potgieter, Mouton & Davel, "Impact of Batch Normalization on
Convolutional Network Representations", as a Ray-distributed sweep system.
"""

__version__ = "0.1.0"
