// The test harness of filter_test.go: runs the deployed filter (rpc-filter.js) and the reference
// (rpc-filter-reference.js) on the same request, each with a stand-in for r that records what it does, and
// answers with both records. The deny list and $cw_deny_spares_reads come from the query (deny=..., spares=1); the
// deployed filter also gets $cw_fast_read from the template's own maps (filter_compare_test.go copies them from a
// rendered config) when spares=1, as the template renders them only then.
import current from 'rpc-filter.js';
import reference from 'rpc-filter-reference.js';

function run(f, r, fast) {
    var out = {};
    f.filter({
        variables: {cw_service: 'svc', cw_deny: r.args.deny || '', cw_deny_spares_reads: r.args.spares || '',
            cw_fast_read: fast},
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
    var fast = r.args.spares ? r.variables.cw_fast_read : '';
    r.return(200, JSON.stringify({current: run(current, r, fast), reference: run(reference, r, ''), fast: fast || ''}));
}

export default {compare};
