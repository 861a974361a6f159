"""The operator <-> runtime contract: one small package both sides import and neither owns.

``tts_operator`` (kopf, no torch) and ``tts_runtime`` (torch, no kopf) meet here: the paths inside a
pod, the run and serve specs, exit codes, progress reports and the model manifest
(``tts_contract.contract``). Nothing heavier than pydantic is imported.
"""
