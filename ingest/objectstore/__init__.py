"""Object stores: S3 (aioboto3, STS AssumeRole) and the local filesystem store laid
out exactly like S3 (`<dir>/<bucket>/<key>`). `open_store` picks one from a
destination of the config snapshot."""
