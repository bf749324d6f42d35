"""megatiny.training"""
