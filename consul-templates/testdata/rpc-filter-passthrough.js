// A "filter" that inspects nothing: it reads the body and sends every request to the read location. The overhead
// benchmark (bench_overhead_test.go) runs it to show what njs itself costs per request (a VM per request, the
// internal redirect), apart from what the method filter does. Never deploy it.
function filter(r) {
    var body = r.requestText;
    r.internalRedirect('@cw_' + r.variables.cw_service + (body === undefined ? '_write' : '_read'));
}

export default {filter};
