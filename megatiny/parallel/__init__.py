"""megatiny.parallel: model parallelism (tensor, sequence and context parallel) and its groups.

`state` lays out ranks and builds the process groups (and DeepSpeed's `mpu`),
`tensor_parallel` has the Megatron-style layers, `context_parallel` the Ulysses attention,
`collectives` the differentiable communication they share, `pipeline` the DeepSpeed pipeline
module, and `deepspeed` the DeepSpeed-facing training code (process group, DeepSpeed config,
engine).
"""
