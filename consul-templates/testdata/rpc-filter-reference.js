// The nginx filter as it was before its fast path (commit c866a11), kept unchanged as the reference:
// filter_test.go checks that consul-templates/nginx/rpc-filter.js routes and refuses every request exactly as this
// does, and the overhead benchmark (bench_test.go) runs it as the "before".
//
// chainwarden JSON-RPC filter for nginx (njs 0.7, Debian's libnginx-mod-http-js).
//
// Every request to a chainwarden service location runs filter(): it refuses JSON-RPC calls whose method starts
// with a denied prefix (admin_, debug_, personal_, miner_ by default, from $cw_deny) with a JSON-RPC error, also
// inside batches (a batch with any denied call is refused whole), and sends the rest to the service's named
// locations: @cw_<service>_read when every call is a read that may be retried on the next server,
// @cw_<service>_write otherwise (eth_sendRawTransaction and anything unknown are never re-sent once sent),
// @cw_<service>_ws for WebSocket upgrades.

// Calls that only read state: safe to send again to another server after a failure.
var READ = /^(eth_(blockNumber|call|chainId|estimateGas|gasPrice|maxPriorityFeePerGas|feeHistory|syncing|protocolVersion|accounts|coinbase|mining|hashrate|blobBaseFee|createAccessList|get[A-Za-z]*)|net_[A-Za-z]*|web3_clientVersion|web3_sha3)$/;

function denied(r) {
    return (r.variables.cw_deny || '').split(',')
        .map(function (s) { return s.trim().toLowerCase(); })
        .filter(function (s) { return s.length > 0; });
}

// methods returns every value under a key equal to "method" in any letter case: geth decodes with Go's
// encoding/json, which matches keys case-insensitively, so {"METHOD":"admin_peers"} must not slip through.
function methods(call) {
    var out = [];
    if (call === null || typeof call !== 'object' || Array.isArray(call)) {
        return out;
    }
    Object.keys(call).forEach(function (k) {
        if (k.toLowerCase() === 'method') {
            out.push(call[k]);
        }
    });
    return out;
}

function rpcError(id, code, message) {
    return {jsonrpc: '2.0', id: id === undefined ? null : id, error: {code: code, message: message}};
}

function reply(r, body) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(200, JSON.stringify(body) + '\n');
}

function idOf(call) {
    return (call !== null && typeof call === 'object' && !Array.isArray(call)) ? call.id : null;
}

function filter(r) {
    var svc = r.variables.cw_service;
    if (!svc) {
        reply(r, rpcError(null, -32601, 'no such chainwarden service; use /<service>'));
        return;
    }
    var base = '@cw_' + svc;
    if (r.headersIn['Upgrade']) {
        r.internalRedirect(base + '_ws');
        return;
    }
    if (r.method !== 'POST') {
        r.internalRedirect(base + '_read');
        return;
    }
    var text = r.requestText;
    if (text === undefined) {
        // The body did not fit in client_body_buffer_size and went to a file: it cannot be inspected.
        reply(r, rpcError(null, -32600, 'request body too large for the proxy'));
        return;
    }
    var msg;
    try {
        msg = JSON.parse(text);
    } catch (e) {
        reply(r, rpcError(null, -32700, 'parse error'));
        return;
    }
    var batch = Array.isArray(msg);
    var calls = batch ? msg : [msg];
    var deny = denied(r);
    var refused = {};
    var anyRefused = false;
    var allReads = true;
    calls.forEach(function (call, i) {
        methods(call).forEach(function (m) {
            var name = (typeof m === 'string') ? m : '';
            var lower = name.toLowerCase();
            for (var j = 0; j < deny.length; j++) {
                if (lower.indexOf(deny[j]) === 0) {
                    refused[i] = name;
                    anyRefused = true;
                }
            }
            if (!READ.test(name)) {
                allReads = false;
            }
        });
        if (methods(call).length === 0) {
            allReads = false;
        }
    });
    if (anyRefused) {
        var errs = calls.map(function (call, i) {
            if (refused[i] !== undefined) {
                return rpcError(idOf(call), -32601, 'method ' + refused[i] + ' is not allowed by the proxy');
            }
            return rpcError(idOf(call), -32600, 'batch refused: it contains a method not allowed by the proxy');
        });
        reply(r, batch ? errs : errs[0]);
        return;
    }
    r.internalRedirect(base + (allReads ? '_read' : '_write'));
}

export default {filter};
