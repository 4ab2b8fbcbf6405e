-- Argo CD health check for kmseal.dev/EncryptedSecret (Lua 5.1, as Argo CD runs it).
-- Healthy: the Secret is written from the current spec. Progressing: the controller has not
-- seen the current spec yet, or is waiting for KMS (throttled, unavailable), which it retries
-- by itself. Degraded: anything else that keeps the Secret from being right.
local hs = {}
hs.status = "Progressing"
hs.message = "Waiting for the kmseal controller"
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  hs.message = "Waiting for the kmseal controller to process the current spec"
  return hs
end
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    if condition.type == "Ready" then
      hs.message = condition.message or ""
      if condition.status == "True" then
        hs.status = "Healthy"
      elseif condition.reason == "Throttled" or condition.reason == "KmsUnavailable" then
        hs.status = "Progressing"
      else
        hs.status = "Degraded"
      end
      return hs
    end
  end
end
return hs
