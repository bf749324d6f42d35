"""megatiny.model"""
