"""Group Preference Optimization (Zhao, Dang & Grover, ICLR 2024), faithful to the authors' model.

Each candidate is one point: x = its embedding, y = the group's probability for it. Context tokens
are MLP([x; y]), target tokens MLP([x; 0]); a 6-layer post-LN transformer encoder without positional
encoding in which every token attends to the context tokens only; a (mu, s) head; p = softmax of mu
within each target item; loss = Gaussian NLL of y under N(p, exp(s)^2).

Speed without changing the function:
- no token attends to a target, so each layer runs attention with only the group's context as keys
  (cost T x C instead of (C+T)^2); a test checks equality with the authors' masked
  `nn.TransformerEncoder`;
- the last layer computes the target tokens only (the context's outputs there are never read);
- the embedding MLP's first layer is applied once per distinct candidate vector of a batch (to the whole
  feature table when the batch holds most of it, so that the backward keeps no gathered copy);
- seeds train together: on CUDA `GPOEnsemble` holds S networks' parameters stacked on a leading axis,
  every linear layer is one batched matmul over the S members, and Adam (elementwise) updates each
  member exactly as it would alone; on the CPU each seed trains in its own process, all at once. Each
  seed keeps its own sampling stream, validation and early stopping, so `fit_seeds` equals separate
  runs (tested: up to float rounding on CUDA's layout, exactly in processes);
- attention: on CUDA one `scaled_dot_product_attention` call per layer for all groups of all members
  (padded to the longest group, keys masked); on the CPU a loop over groups, which measured faster
  there (`benchmarks/gpo_gpu.py --attention`); both paths are tested equal;
- a step's batch (sampling, layout, distinct feature rows, target counts) is built on the host and copied
  to the device once, through pinned memory: a CUDA step never waits for the device (a GPU test runs
  steps under torch's sync debug mode);
- `compile: true` pads every training batch to one static shape (`StaticShape`, bounded from the data)
  and compiles the model (CUDA: CUDA graphs), so that one graph serves every step.

Deviations from the authors' code, each a fix: validation groups (not the test groups) pick the
checkpoint; the loss is the mean over real target points (theirs counts padding in the mean);
validation context draws are fixed by the seed (theirs change at every evaluation).

The package: `network` (the model), `batching` (batches as flat index tensors), `training` (the
meta-training loop and checkpoints), `processes` (seeds in worker processes on the CPU) and `method`
(the registered method)."""

from .batching import Batch, GroupPoints, Part, StaticShape, make_batch
from .method import GPO, cpu_supports_bf16
from .network import GPOEnsemble, GPONetwork, gaussian_nll
from .training import step_function, train, train_step

__all__ = [
    "GPO",
    "Batch",
    "GPOEnsemble",
    "GPONetwork",
    "GroupPoints",
    "Part",
    "StaticShape",
    "cpu_supports_bf16",
    "gaussian_nll",
    "make_batch",
    "step_function",
    "train",
    "train_step",
]
