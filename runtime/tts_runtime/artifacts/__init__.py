"""Artifacts in object storage, on the Hugging Face hub or behind https: ``tts-runtime fetch`` and
``tts-runtime publish``.

- ``store``: the S3 client from a location's environment (``StorageEnv``), ``ArtifactError`` (an exit
  code of the contract, its reason, the URI, a message without secrets), ``classify`` (any storage,
  hub, http or socket error -> an ``ArtifactError``) and the bounded retry with back-off;
- ``fetch``: an s3 prefix or object, a hub repository at a revision, an https file or archive -> a
  local directory, resumable, checksummed;
- ``publish``: a version directory -> an s3 prefix, never over an existing version, manifest last.

Heavy imports (boto3, huggingface_hub, requests) happen inside the functions that need them.
"""
