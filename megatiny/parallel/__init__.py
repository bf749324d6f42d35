"""megatiny.parallel: how a model is spread over devices (process group, DeepSpeed engine; later
tensor, pipeline and context parallelism)."""
