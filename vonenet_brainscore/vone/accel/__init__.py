"""vone/accel"""
