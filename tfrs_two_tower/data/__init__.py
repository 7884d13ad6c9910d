"""Data stages: the dataset format, its writer and reader, sources and the synthetic world.

Nothing here imports model code; the model reads what these modules write.
"""
