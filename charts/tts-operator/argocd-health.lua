-- Argo CD health check for tts-operator.dev/VoiceModel.
--
-- Install it in argocd-cm (resource.customizations.health.tts-operator.dev_VoiceModel), or let the
-- chart do it. It reads only status, as kstatus does:
--   * observedGeneration behind metadata.generation -> Progressing (the operator has not seen the
--     latest spec yet: an old "Ready" must not count);
--   * Degraded=True -> Degraded (a failed rollout; with autoRollback the old version still serves,
--     but the version in git is not what runs);
--   * Stalled=True -> Degraded;
--   * Ready=True -> Healthy;
--   * otherwise Progressing (rolling out, waiting for a TrainingRun to export).
hs = {}
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to report status"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local conditions = {}
if obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end

local function message(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  return fallback
end

local degraded = conditions["Degraded"]
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = message(degraded, "The rollout failed")
  return hs
end

local stalled = conditions["Stalled"]
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message(stalled, "The VoiceModel is stalled")
  return hs
end

local ready = conditions["Ready"]
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message(ready, "Serving the desired version")
  return hs
end

hs.status = "Progressing"
hs.message = message(ready, message(conditions["Reconciling"], "Rolling out"))
return hs
