-- Argo CD health check for jobbatch.io/JobBatch (resource.customizations.health.jobbatch.io_JobBatch).
-- It reads the kstatus conditions the operator writes: Stalled=True is Degraded (failed, not accepted,
-- or its Jobs refused), Ready=True is Healthy, a suspended batch is Suspended, anything else Progressing.
local hs = {}
local conditions = {}
if obj.status ~= nil and obj.status.conditions ~= nil then
  for _, c in ipairs(obj.status.conditions) do
    conditions[c.type] = c
  end
end
local function is_true(ctype)
  return conditions[ctype] ~= nil and conditions[ctype].status == "True"
end
if is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = conditions["Stalled"].reason .. ": " .. (conditions["Stalled"].message or "")
elseif is_true("Ready") then
  hs.status = "Healthy"
  hs.message = conditions["Ready"].message or ""
elseif is_true("Suspended") then
  hs.status = "Suspended"
  hs.message = "spec.suspend is true"
else
  hs.status = "Progressing"
  local progress = ""
  if obj.status ~= nil and obj.status.progress ~= nil then
    progress = obj.status.progress
  end
  hs.message = "shards finished: " .. progress
end
return hs
