"""Packing ideas: interventions against token-representation interference (see base.py for the protocol).

In a recipe: `model.interventions: [{class_path: widthlab.interventions.ZLoss, init_args: {coef: 1.0e-4}}]`.
"""
from widthlab.interventions.base import Intervention, move_params
from widthlab.interventions.bigram_hash import BigramHashEmbedding
from widthlab.interventions.factorized import AdaptiveInput, FactorizedEmbedding
from widthlab.interventions.frame_penalty import FramePenalty
from widthlab.interventions.heads import MixtureOfSoftmaxes, Sigsoftmax, WideHead
from widthlab.interventions.logits import LogitSoftcap, ZLoss
from widthlab.interventions.signed_decay import SignedRowDecay
from widthlab.interventions.unit_norm import UnitNormRows

__all__ = ["Intervention", "move_params", "SignedRowDecay", "UnitNormRows", "FramePenalty", "BigramHashEmbedding",
           "FactorizedEmbedding", "AdaptiveInput", "MixtureOfSoftmaxes", "WideHead", "Sigsoftmax", "ZLoss",
           "LogitSoftcap"]
