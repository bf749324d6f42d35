"""megatiny.parallel: parallel state and communication (imports no model, training, checkpoint or eval).

`state` lays out ranks and builds the process groups (and DeepSpeed's `mpu`), `process_group`
joins, waits on and destroys the process group, `collectives` has the differentiable
communication, `tensor_parallel` the Megatron-style layer primitives (given their
initialization by the model), `context_parallel` the Ulysses attention wrapper (given the
model's local attention) and `checks` what a layout needs of the sequence length and ZeRO stage.
The model builds its parallel layers from these (`megatiny.model`); the DeepSpeed engine is
`megatiny.training.engine`'s.
"""
