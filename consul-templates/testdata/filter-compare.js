// The test harness of filter_test.go: runs the deployed filter (rpc-filter.js) and the reference
// (rpc-filter-reference.js) on the same request, each with a stand-in for r that records what it does, and
// answers with both records. The deny list and $cw_deny_spares_reads come from the query (deny=..., spares=1).
import current from 'rpc-filter.js';
import reference from 'rpc-filter-reference.js';

function run(f, r) {
    var out = {};
    f.filter({
        variables: {cw_service: 'svc', cw_deny: r.args.deny || '', cw_deny_spares_reads: r.args.spares || ''},
        headersIn: r.headersIn,
        method: r.method,
        requestText: r.requestText,
        headersOut: {},
        return: function (status, body) { out.status = status; out.body = body; },
        internalRedirect: function (uri) { out.redirect = uri; }
    });
    return out;
}

function compare(r) {
    r.return(200, JSON.stringify({current: run(current, r), reference: run(reference, r)}));
}

export default {compare};
