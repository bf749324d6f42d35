"""megatiny.data"""
