public import Prometheus
public import SwitchyardCore
import SwitchyardModels

/// The gateway's Prometheus metrics, declared once; every label comes from a bounded set
/// (API format, HTTP status, error code, configured model names).
public final class GatewayMetrics: CostRecorder {
    /// The registry `GET /metrics` renders. One per gateway, so tests never share state.
    public let registry = PrometheusCollectorRegistry()
    let knownModels: Set<String>

    static let latencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120),
    ]
    static let overheadBuckets: [Duration] = [
        .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(200), .microseconds(300),
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50),
    ]

    static var requestsDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "switchyard", metricName: "requests", unitName: "total", helpText: "Requests answered, by API, HTTP status and streaming.") }
    static var requestDurationDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "switchyard", metricName: "request_duration", unitName: "seconds", helpText: "End-to-end latency as seen by the gateway.") }
    static var errorsDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "switchyard", metricName: "errors", unitName: "total", helpText: "Errors by bounded error code.") }
    static var timeToFirstTokenDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "switchyard", metricName: "time_to_first_token", unitName: "seconds", helpText: "Time until the first streamed event was sent to the client.") }
    static var gatewayOverheadDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "switchyard", metricName: "gateway_overhead", unitName: "seconds", helpText: "Time spent in the gateway: end to end minus waiting on the upstream.") }
    static var tokensDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "switchyard", metricName: "tokens", unitName: "total", helpText: "Tokens by model and kind (input, output, cache_read, cache_write).") }
    static var costNanoUsdDescriptor: MetricNameDescriptor { MetricNameDescriptor(namespace: "switchyard", metricName: "cost_nano_usd", unitName: "total", helpText: "Cost at list prices in nano-USD, by model.") }

    public init(models: some Sequence<String>) {
        self.knownModels = Set(models)
    }

    func modelLabel(_ model: String?) -> String {
        guard let model, knownModels.contains(model) else { return "other" }
        return model
    }

    /// Counts one finished request by API and HTTP status.
    func request(api: APIFormat, status: Int, streamed: Bool, duration: Duration) {
        registry.makeCounter(descriptor: Self.requestsDescriptor,
                             labels: [("api", api.rawValue), ("status", String(status)), ("stream", String(streamed))]).increment()
        registry.makeDurationHistogram(descriptor: Self.requestDurationDescriptor,
                                       labels: [("api", api.rawValue), ("stream", String(streamed))],
                                       buckets: Self.latencyBuckets).record(duration)
    }

    /// Counts one error by its bounded code.
    func error(api: APIFormat, code: GatewayError.Code) {
        registry.makeCounter(descriptor: Self.errorsDescriptor, labels: [("api", api.rawValue), ("code", code.rawValue)]).increment()
    }

    /// Time to the first streamed byte sent to the client.
    func timeToFirstToken(api: APIFormat, model: String?, _ duration: Duration) {
        registry.makeDurationHistogram(descriptor: Self.timeToFirstTokenDescriptor,
                                       labels: [("api", api.rawValue), ("model", modelLabel(model))],
                                       buckets: Self.latencyBuckets).record(duration)
    }

    /// Time the gateway itself spent: end to end minus the time waiting on the upstream.
    func overhead(api: APIFormat, streamed: Bool, _ duration: Duration) {
        registry.makeDurationHistogram(descriptor: Self.gatewayOverheadDescriptor,
                                       labels: [("api", api.rawValue), ("stream", String(streamed))],
                                       buckets: Self.overheadBuckets).record(max(.zero, duration))
    }

    public func record(_ record: CostRecord) {
        let model = modelLabel(record.model)
        let usage = record.usage
        for (kind, count) in [("input", usage.inputTokens), ("output", usage.outputTokens),
                              ("cache_read", usage.cacheReadTokens), ("cache_write", usage.cacheWriteTokens)] where count > 0 {
            registry.makeCounter(descriptor: Self.tokensDescriptor, labels: [("model", model), ("kind", kind)])
                .increment(by: Int64(count))
        }
        registry.makeCounter(descriptor: Self.costNanoUsdDescriptor, labels: [("model", model)]).increment(by: record.cost.value)
    }

    /// The Prometheus text exposition.
    public func render() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
