"""megatiny.checkpoint"""
