// chainwarden JSON-RPC filter for nginx (njs 0.7, Debian's libnginx-mod-http-js).
//
// Every request to a chainwarden service location runs filter(): it refuses JSON-RPC calls whose method starts
// with a denied prefix (admin_, debug_, personal_, miner_ by default, from $cw_deny) with a JSON-RPC error, also
// inside batches (a batch with any denied call is refused whole), and sends the rest to the service's named
// locations: @cw_<service>_read when every call is a read that may be retried on the next server,
// @cw_<service>_write otherwise (eth_sendRawTransaction and anything unknown are never re-sent once sent),
// @cw_<service>_ws for WebSocket upgrades.
//
// This runs for every call, in njs 0.7's interpreter, where the module's top level runs again for each request (every
// function declared there is made anew) and every builtin call, JSON.parse, regular expression match or object
// literal costs thousands of instructions. So, in order of cost:
//   - nginx's own fast path: $cw_fast_read (rpc-proxy.conf.ctmpl) is the service's name when the request is a POST
//     whose body a PCRE2 pattern, compiled to machine code, finds to be reads only in plain JSON; filter() then
//     sends it on without looking at the body. The top level declares only filter() and general(), so that a
//     request that takes this path makes two functions, not a dozen.
//   - general(): one JSON.parse, then, for one call with only the JSON-RPC keys and a common read method (while the
//     deny list cannot match a read), a few string comparisons;
//   - everything else: the full filter.
// All decide exactly as the filter did before the fast paths (testdata/rpc-filter-reference.js;
// filter_compare_test.go compares them body by body). Figures: docs/BENCHMARKS.md.

function filter(r) {
    var fast = r.variables.cw_fast_read;
    if (fast) {
        r.internalRedirect('@cw_' + fast + '_read');
        return;
    }
    general(r);
}

// general decides any request that the fast path in nginx did not take. The functions it uses are declared inside
// it, so that they are made only for the requests that need them.
function general(r) {
    // commonRead says whether name is one of the reads clients call most. isRead's regular expression matches each of
    // them; a switch costs a fraction of a match.
    function commonRead(name) {
        switch (name) {
        case 'eth_blockNumber':
        case 'eth_call':
        case 'eth_chainId':
        case 'eth_estimateGas':
        case 'eth_gasPrice':
        case 'eth_maxPriorityFeePerGas':
        case 'eth_feeHistory':
        case 'eth_syncing':
        case 'eth_getBalance':
        case 'eth_getBlockByHash':
        case 'eth_getBlockByNumber':
        case 'eth_getBlockReceipts':
        case 'eth_getCode':
        case 'eth_getLogs':
        case 'eth_getStorageAt':
        case 'eth_getTransactionByHash':
        case 'eth_getTransactionCount':
        case 'eth_getTransactionReceipt':
        case 'net_version':
        case 'web3_clientVersion':
            return true;
        }
        return false;
    }

    // isRead says whether a call only reads state, so that it may be sent again to another server after a failure.
    function isRead(name) {
        if (commonRead(name)) {
            return true;
        }
        if (name === 'eth_sendRawTransaction') {
            return false;
        }
        // Here rather than at the top level, which runs for every request. ("$" also matches before a final newline.)
        var READ = /^(eth_(blockNumber|call|chainId|estimateGas|gasPrice|maxPriorityFeePerGas|feeHistory|syncing|protocolVersion|accounts|coinbase|mining|hashrate|blobBaseFee|createAccessList|get[A-Za-z]*)|net_[A-Za-z]*|web3_clientVersion|web3_sha3)$/;
        return READ.test(name);
    }

    // denyList returns $cw_deny in lower case: the denied prefixes, separated by commas. The template keeps only
    // letters, digits, "_" and "," in it.
    function denyList(r) {
        return (r.variables.cw_deny || '').toLowerCase();
    }

    // isDenied says whether name starts with a denied prefix, in any letter case.
    function isDenied(name, deny) {
        var lower = name.toLowerCase();
        // No prefix starts with the name's first letter: the usual answer, found without splitting the list.
        if ((',' + deny).indexOf(',' + lower.charAt(0)) < 0) {
            return false;
        }
        var prefixes = deny.split(',');
        for (var i = 0; i < prefixes.length; i++) {
            if (prefixes[i].length > 0 && lower.startsWith(prefixes[i])) {
                return true;
            }
        }
        return false;
    }

    // plainMethod returns the method of a call whose keys are all among jsonrpc, id, method and params, so that
    // "method" is its only method key; undefined for anything else: another key, no method, not an object (an array
    // from JSON.parse has no "method" key).
    function plainMethod(call) {
        var name;
        if (call !== null && typeof call === 'object') {
            for (var k in call) {
                if (k === 'method') {
                    name = call.method;
                } else if (k !== 'jsonrpc' && k !== 'id' && k !== 'params') {
                    return undefined;
                }
            }
        }
        return name;
    }

    var READS = 0, WRITES = 1, REFUSED = 2;

    // verdict sorts any one call. geth decodes with Go's encoding/json, which matches keys case-insensitively, so
    // every key equal to "method" in any letter case counts ({"METHOD":"admin_peers"} must not slip through), and a
    // call is a read only when it has a method and all its method keys are reads.
    function verdict(call, deny) {
        if (call === null || typeof call !== 'object' || Array.isArray(call)) {
            return WRITES;
        }
        var v = -1;
        for (var k in call) {
            if (k.toLowerCase() !== 'method') {
                continue;
            }
            var m = call[k];
            var name = (typeof m === 'string') ? m : '';
            if (isDenied(name, deny)) {
                return REFUSED;
            }
            if (!isRead(name)) {
                v = WRITES;
            } else if (v === -1) {
                v = READS;
            }
        }
        return v === -1 ? WRITES : v;
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

    // refuse answers a request that has a denied call with one error per call: a denied call's error names its last
    // denied method; the others say the batch was refused.
    function refuse(r, msg, batch, deny) {
        var calls = batch ? msg : [msg];
        var errs = [];
        for (var i = 0; i < calls.length; i++) {
            var call = calls[i];
            var denied = undefined; // var is function-scoped: reset it for each call
            if (call !== null && typeof call === 'object' && !Array.isArray(call)) {
                for (var k in call) {
                    if (k.toLowerCase() === 'method') {
                        var name = (typeof call[k] === 'string') ? call[k] : '';
                        if (isDenied(name, deny)) {
                            denied = name;
                        }
                    }
                }
            }
            if (denied !== undefined) {
                errs.push(rpcError(idOf(call), -32601, 'method ' + denied + ' is not allowed by the proxy'));
            } else {
                errs.push(rpcError(idOf(call), -32600, 'batch refused: it contains a method not allowed by the proxy'));
            }
        }
        reply(r, batch ? errs : errs[0]);
    }

    function decide(r) {
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

        // The usual request: one call with only the JSON-RPC keys. $cw_deny_spares_reads is "1" when no denied prefix
        // can start the name of a read (the template checks), so that a common read needs no look at the deny list.
        var deny;
        var name = plainMethod(msg);
        if (name !== undefined) {
            if (typeof name !== 'string') {
                name = '';
            }
            if (commonRead(name) && r.variables.cw_deny_spares_reads === '1') {
                r.internalRedirect(base + '_read');
                return;
            }
            deny = denyList(r);
            if (isDenied(name, deny)) {
                refuse(r, msg, false, deny);
                return;
            }
            r.internalRedirect(base + (isRead(name) ? '_read' : '_write'));
            return;
        }

        // Batches, and calls with other keys.
        var batch = Array.isArray(msg);
        var v;
        if (batch) {
            var spares = r.variables.cw_deny_spares_reads === '1';
            v = READS;
            for (var i = 0; i < msg.length && v !== REFUSED; i++) {
                var m = plainMethod(msg[i]);
                if (spares && typeof m === 'string' && commonRead(m)) {
                    continue;
                }
                if (deny === undefined) {
                    deny = denyList(r);
                }
                var c = verdict(msg[i], deny);
                if (c !== READS) {
                    v = c;
                }
            }
        } else {
            deny = denyList(r);
            v = verdict(msg, deny);
        }
        if (v === REFUSED) {
            refuse(r, msg, batch, deny);
            return;
        }
        r.internalRedirect(base + (v === READS ? '_read' : '_write'));
    }

    decide(r);
}

export default {filter};
