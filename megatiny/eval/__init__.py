"""megatiny.eval"""
