"""`tts-runtime train`: dataset preflight, XTTS/VITS training, checkpoints, resume, progress."""
