-- chainwarden JSON-RPC filter for HAProxy (Lua 5.3 built into Debian's HAProxy 2.6, JSON from Debian's lua-cjson).
--
-- The action cw_rpc_filter reads the buffered request body (option http-buffer-request) and sets:
--   txn.cw_reply  a JSON-RPC error to send back instead of proxying, when a call's method starts with a prefix in
--                 txn.cw_deny (a batch with any denied call is refused whole) or the body is not JSON
--   txn.cw_write  true unless every call is a read that may be retried on another server; the backend then
--                 disables L7 retries (eth_sendRawTransaction must not be replayed blindly)
local cjson = require("cjson.safe")

local READ_PREFIX = { "eth_get", "net_" }
local READ = {}
for _, m in ipairs({ "eth_blockNumber", "eth_call", "eth_chainId", "eth_estimateGas", "eth_gasPrice",
	"eth_maxPriorityFeePerGas", "eth_feeHistory", "eth_syncing", "eth_protocolVersion", "eth_accounts",
	"eth_coinbase", "eth_mining", "eth_hashrate", "eth_blobBaseFee", "eth_createAccessList",
	"web3_clientVersion", "web3_sha3" }) do
	READ[m] = true
end

local function is_read(m)
	if READ[m] then
		return true
	end
	for _, p in ipairs(READ_PREFIX) do
		if m:sub(1, #p) == p and m:match("^[%w_]+$") then
			return true
		end
	end
	return false
end

local function split_deny(s)
	local out = {}
	for p in string.gmatch(s or "", "[^,]+") do
		p = p:gsub("^%s+", ""):gsub("%s+$", ""):lower()
		if #p > 0 then
			out[#out + 1] = p
		end
	end
	return out
end

-- methods returns the values of every key equal to "method" in any letter case: geth decodes with Go's
-- encoding/json, which matches keys case-insensitively.
local function methods(call)
	local out = {}
	if type(call) ~= "table" then
		return out
	end
	for k, v in pairs(call) do
		if type(k) == "string" and k:lower() == "method" then
			out[#out + 1] = v
		end
	end
	return out
end

local function id_of(call)
	if type(call) == "table" and call.id ~= nil then
		return call.id
	end
	return cjson.null
end

local function rpc_error(id, code, message)
	return { jsonrpc = "2.0", id = id, error = { code = code, message = message } }
end

local function reply(txn, v)
	txn:set_var("txn.cw_reply", cjson.encode(v))
end

core.register_action("cw_rpc_filter", { "http-req" }, function(txn)
	txn:set_var("txn.cw_write", true)
	if txn.sf:method() ~= "POST" then
		txn:set_var("txn.cw_write", false)
		return
	end
	local body = txn.sf:req_body() or ""
	local len = tonumber(txn.sf:req_hdr("content-length") or "") or #body
	if #body < len then
		reply(txn, rpc_error(cjson.null, -32600, "request body too large for the proxy"))
		return
	end
	local msg = cjson.decode(body)
	if msg == nil or type(msg) ~= "table" then
		reply(txn, rpc_error(cjson.null, -32700, "parse error"))
		return
	end
	local batch = body:match("^%s*%[") ~= nil
	local calls = batch and msg or { msg }
	local deny = split_deny(txn:get_var("txn.cw_deny"))
	local refused, any_refused, all_reads = {}, false, true
	for i, call in ipairs(calls) do
		local ms = methods(call)
		if #ms == 0 then
			all_reads = false
		end
		for _, m in ipairs(ms) do
			local name = type(m) == "string" and m or ""
			local lower = name:lower()
			for _, p in ipairs(deny) do
				if lower:sub(1, #p) == p then
					refused[i] = name
					any_refused = true
				end
			end
			if not is_read(name) then
				all_reads = false
			end
		end
	end
	if any_refused then
		local errs = {}
		for i, call in ipairs(calls) do
			if refused[i] then
				errs[i] = rpc_error(id_of(call), -32601, "method " .. refused[i] .. " is not allowed by the proxy")
			else
				errs[i] = rpc_error(id_of(call), -32600, "batch refused: it contains a method not allowed by the proxy")
			end
		end
		reply(txn, batch and errs or errs[1])
		return
	end
	txn:set_var("txn.cw_write", not all_reads)
end, 0)
