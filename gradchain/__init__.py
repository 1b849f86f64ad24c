"""gradchain: the gradient chain rule, compiled.

    grad_x L = J_1^T J_2^T ... J_k^T grad_{x^(k)} L

evaluated by compiled kernels with exact results and clear errors.  See
:func:`vjp`, :func:`jvp` and :class:`Chain`.
"""
from gradchain._kernels import (
    get_num_threads,
    openmp_enabled,
    set_num_threads,
    simd_target,
)
from gradchain._chain import Trajectory
from gradchain._config import _register_threadpoolctl, show_config
from gradchain.chain import Chain, ChainPlan, jacobian, jvp, vjp
from gradchain.composition import Composition, check_grad, compose
from gradchain.fpenv import errstate, get_subnormals
from gradchain.losses import (
    CrossEntropy,
    Dot,
    LogSumExp,
    Loss,
    MeanSquaredError,
    SquaredError,
)
from gradchain.maps import (
    Affine,
    Cos,
    Exp,
    LeakyReLU,
    Log,
    LogSoftmax,
    Map,
    ReLU,
    Scale,
    Sigmoid,
    Sin,
    Softmax,
    Softplus,
    Square,
    Tanh,
)
from gradchain.operators import (
    Dense,
    Diagonal,
    DiagonalPlusRankOne,
    Identity,
    Operator,
)

_register_threadpoolctl()

# The one copy of the version: pyproject.toml reads it from here
# ([tool.setuptools.dynamic]), so the build's metadata and this agree.
__version__ = "0.1.0"

__all__ = [
    "Chain",
    "vjp",
    "jvp",
    "jacobian",
    "ChainPlan",
    "Trajectory",
    "Operator",
    "Dense",
    "Diagonal",
    "Identity",
    "DiagonalPlusRankOne",
    "Map", "Affine", "Tanh", "Sigmoid", "ReLU", "LeakyReLU", "Softplus", "Exp",
    "Log", "Sin", "Cos", "Square", "Scale", "Softmax", "LogSoftmax",
    "Loss", "SquaredError", "MeanSquaredError", "CrossEntropy", "LogSumExp",
    "Dot", "Composition", "compose", "check_grad",
    "set_num_threads",
    "get_num_threads",
    "simd_target",
    "openmp_enabled",
    "show_config",
    "errstate",
    "get_subnormals",
    "__version__",
]
