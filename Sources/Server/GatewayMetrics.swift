public import Admission
public import Prometheus
public import SwitchyardCore
import Caching
import Providers
import SwitchyardModels

/// The gateway's Prometheus metrics, declared once; every label comes from a bounded set
/// (API format, HTTP status, error code, configured model names).
///
/// Handles are created up front (or once per new HTTP status) and found by array index (or, for model names and
/// rare statuses, a small dictionary), so recording a request costs no registry lookup and almost no hashing.
public final class GatewayMetrics: CostRecorder, CacheRecorder, UpstreamAnomalyRecorder, LimitRecorder, AttemptRecorder,
    AdmissionObserver
{
    /// The registry `GET /metrics` renders. One per gateway, so tests never share state.
    public let registry: PrometheusCollectorRegistry

    struct Series: Hashable {
        var api: APIFormat, streamed: Bool
        /// Position in the per-series arrays.
        var index: Int { (api == .openAI ? 0 : 2) + (streamed ? 1 : 0) }
        static let all = APIFormat.allCases.flatMap { api in [false, true].map { Series(api: api, streamed: $0) } }
            .sorted { $0.index < $1.index }
    }
    struct StatusSeries: Hashable { var api: APIFormat, status: Int, streamed: Bool }
    struct ErrorSeries: Hashable { var api: APIFormat, code: GatewayError.Code }
    struct ModelSeries: Hashable { var api: APIFormat, model: String }
    struct ModelCounters {
        var input, output, cacheRead, cacheWrite, cost: Counter
    }

    static let latencyBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60), .seconds(120),
    ]
    static let overheadBuckets: [Duration] = [
        .microseconds(25), .microseconds(50), .microseconds(100), .microseconds(200), .microseconds(300),
        .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50),
    ]

    static var requestsDescriptor: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "switchyard", metricName: "requests", unitName: "total",
                             helpText: "Requests answered, by API, HTTP status and streaming.")
    }
    /// By `Series.index`.
    let durations: [DurationHistogram]
    let overheads: [DurationHistogram]
    /// Status 200 by `Series.index`: the common case, without the lock and dictionary of `statusCounters`.
    let okCounters: [Counter]
    let errors: [ErrorSeries: Counter]
    let timeToFirstToken: [ModelSeries: DurationHistogram]
    let models: [String: ModelCounters]
    let statusCounters = Locked([StatusSeries: Counter]())
    /// By `cacheIndex(_:_:)`.
    let cacheLookups: [Counter]
    let cacheSaved: [CacheKind: Counter]
    let semanticRejections: [String: Counter]
    let falseHits: Counter
    /// Shared-state store failures by seam (each bypassed or refused by its failure policy).
    let stateErrors: [String: Counter]
    let shadowChecks: Counter
    /// 429s by limit name (configured, so bounded); answers by degradation kind.
    let limitRefusals: [String: Counter]
    let degradations: [Degradation: Counter]
    let shadowDisagreements: Counter
    let calibrationLabels: [CalibrationLabelSource: Counter]
    let promptCacheSaved: Counter
    let promptCacheWritePremium: Counter
    let estimatedUsage: Counter
    /// By `UpstreamAnomaly.allCases` order.
    let anomalies: [Counter]
    /// Requests waiting for an upstream connection, per configured provider; set when `/metrics` is rendered.
    let poolWaiters: [String: Gauge]
    let retries: [String: Counter]
    let fallbacks: [String: Counter]
    /// Per deployment: 0 closed, 1 open, 2 half-open.
    let breakers: [String: Gauge]
    /// Per deployment and priority (`Priority.rawValue`): requests waiting for its budget; set when rendered.
    let queueDepths: [String: [Gauge]]
    /// Per priority: how long requests waited in a queue, and those that left it refused, by reason.
    let queueWaits: [DurationHistogram]
    let queueRefusals: [Priority: [AdmissionRefusal.Reason: Counter]]
    /// Jobs accepted, and jobs ended by status, per priority; webhook deliveries by result.
    let jobsAccepted: [Counter]
    let jobsEnded: [Priority: [JobStatus: Counter]]
    let webhookDeliveries: [Bool: Counter]
    /// Ledger records by what became of them: written (to the aggregates and the sinks' queue), or dropped (a full
    /// buffer).
    let ledgerRecords: [Bool: Counter]
    /// Budget alerts sent (claimed by this instance), by limit.
    let budgetAlerts: [String: Counter]
    /// Batches sent (or not) to the providers' batch APIs, their requests by outcome, and what they saved.
    let batches: [String: Counter]
    let batchRequests: [String: Counter]
    let batchSaved: Counter

    public init(models modelNames: some Sequence<String>, providers: some Sequence<String> = [String](),
                limits limitNames: some Sequence<String> = [String](),
                deployments: some Sequence<String> = [String](), budgeted: some Sequence<String> = [String]()) {
        let registry = PrometheusCollectorRegistry()
        let names = Set(modelNames).union(["other"])
        let apis = APIFormat.allCases
        var errors: [ErrorSeries: Counter] = [:]
        var ttft: [ModelSeries: DurationHistogram] = [:]
        let duration = MetricNameDescriptor(namespace: "switchyard", metricName: "request_duration", unitName: "seconds",
                                            helpText: "End-to-end latency as seen by the gateway.")
        let overhead = MetricNameDescriptor(namespace: "switchyard", metricName: "gateway_overhead", unitName: "seconds",
                                            helpText: "Time spent in the gateway: end to end minus waiting on the upstream.")
        let error = MetricNameDescriptor(namespace: "switchyard", metricName: "errors", unitName: "total",
                                         helpText: "Errors by bounded error code.")
        let firstToken = MetricNameDescriptor(namespace: "switchyard", metricName: "time_to_first_token", unitName: "seconds",
                                              helpText: "Time until the first streamed event was sent to the client.")
        let labels = Series.all.map { [("api", $0.api.rawValue), ("stream", String($0.streamed))] }
        let durations = labels.map {
            registry.makeDurationHistogram(descriptor: duration, labels: $0, buckets: Self.latencyBuckets)
        }
        let overheads = labels.map {
            registry.makeDurationHistogram(descriptor: overhead, labels: $0, buckets: Self.overheadBuckets)
        }
        okCounters = labels.map {
            registry.makeCounter(descriptor: Self.requestsDescriptor, labels: [$0[0], ("status", "200"), $0[1]])
        }
        for api in apis {
            for code in GatewayError.Code.allCases {
                errors[ErrorSeries(api: api, code: code)] =
                    registry.makeCounter(descriptor: error, labels: [("api", api.rawValue), ("code", code.rawValue)])
            }
            for name in names {
                ttft[ModelSeries(api: api, model: name)] = registry.makeDurationHistogram(
                    descriptor: firstToken, labels: [("api", api.rawValue), ("model", name)], buckets: Self.latencyBuckets)
            }
        }
        let tokens = MetricNameDescriptor(namespace: "switchyard", metricName: "tokens", unitName: "total",
                                          helpText: "Tokens by model and kind (input, output, cache_read, cache_write).")
        let cost = MetricNameDescriptor(namespace: "switchyard", metricName: "cost_nano_usd", unitName: "total",
                                        helpText: "Cost at list prices in nano-USD, by model.")
        var models: [String: ModelCounters] = [:]
        for name in names {
            func counter(_ kind: String) -> Counter {
                registry.makeCounter(descriptor: tokens, labels: [("model", name), ("kind", kind)])
            }
            models[name] = ModelCounters(input: counter("input"), output: counter("output"), cacheRead: counter("cache_read"),
                                         cacheWrite: counter("cache_write"),
                                         cost: registry.makeCounter(descriptor: cost, labels: [("model", name)]))
        }
        let lookups = MetricNameDescriptor(namespace: "switchyard", metricName: "cache_requests", unitName: "total",
                                           helpText: "Requests by response cache (exact, semantic) and result (hit, miss, bypass).")
        let saved = MetricNameDescriptor(namespace: "switchyard", metricName: "cache_saved_nano_usd", unitName: "total",
                                         helpText: "List-price cost of answers served from the response caches, in nano-USD.")
        let rejected = MetricNameDescriptor(namespace: "switchyard", metricName: "semantic_cache_rejections", unitName: "total",
                                            helpText: "Semantic candidates above the threshold refused by verification, by reason.")
        var cacheLookups: [Counter?] = Array(repeating: nil, count: CacheKind.allCases.count * CacheLookup.allCases.count)
        var cacheSaved: [CacheKind: Counter] = [:]
        for kind in CacheKind.allCases {
            for lookup in CacheLookup.allCases {
                cacheLookups[Self.cacheIndex(kind, lookup)] =
                    registry.makeCounter(descriptor: lookups, labels: [("cache", kind.rawValue), ("result", lookup.rawValue)])
            }
            cacheSaved[kind] = registry.makeCounter(descriptor: saved, labels: [("cache", kind.rawValue)])
        }
        var semanticRejections: [String: Counter] = [:]
        // The guard's reasons, and "learned": under the learned verifier's calibrated threshold.
        for reason in SemanticGuard.Rejection.allCases.map(\.rawValue) + ["learned"] {
            semanticRejections[reason] = registry.makeCounter(descriptor: rejected, labels: [("reason", reason)])
        }
        (self.cacheLookups, self.cacheSaved, self.semanticRejections) = (cacheLookups.map { $0! }, cacheSaved, semanticRejections)
        /// A counter without labels, named `switchyard_<name>_total`.
        func total(_ name: String, _ help: String) -> Counter {
            registry.makeCounter(descriptor: MetricNameDescriptor(namespace: "switchyard", metricName: name, unitName: "total",
                                                                  helpText: help))
        }
        falseHits = total("semantic_cache_false_hits", "Semantic hits reported wrong through POST /v1/cache/feedback.")
        let stateErrorDescriptor = MetricNameDescriptor(namespace: "switchyard", metricName: "state_errors", unitName: "total",
                                                        helpText: "Shared-state store failures, by seam (bypassed when failing open).")
        stateErrors = Dictionary(uniqueKeysWithValues: ["exact_cache", "exact_cache_write", "semantic_write", "calibration_write", "limits", "limits_settle", "budgets", "breakers", "usage", "usage_write", "ledger_sink"].map { seam in
            (seam, registry.makeCounter(descriptor: stateErrorDescriptor, labels: [("seam", seam)]))
        })
        let refused = MetricNameDescriptor(namespace: "switchyard", metricName: "rate_limited", unitName: "total",
                                           helpText: "Requests refused with a 429 by a rate limit (after every degradation step), by limit.")
        limitRefusals = Dictionary(Set(limitNames).map { name in (name, registry.makeCounter(descriptor: refused, labels: [("limit", name)])) },
                                   uniquingKeysWith: { first, _ in first })
        let degraded = MetricNameDescriptor(namespace: "switchyard", metricName: "degraded", unitName: "total",
                                            helpText: "Requests a rate limit refused that a degradation step answered, by kind.")
        degradations = Dictionary(uniqueKeysWithValues: Degradation.allCases.map { kind in
            (kind, registry.makeCounter(descriptor: degraded, labels: [("kind", kind.rawValue)]))
        })
        shadowChecks = total("semantic_cache_shadow_checks",
                             "Semantic hits also answered by the model in the background to measure false hits.")
        shadowDisagreements = total("semantic_cache_shadow_disagreements",
                                    "Shadow checks whose fresh answer did not match the cached one (cosine of the texts below 0.8).")
        let labelled = MetricNameDescriptor(namespace: "switchyard", metricName: "semantic_cache_calibration_labels", unitName: "total",
                                            helpText: "Labels the learned verifier's calibration received, by source.")
        calibrationLabels = Dictionary(uniqueKeysWithValues: CalibrationLabelSource.allCases.map { source in
            (source, registry.makeCounter(descriptor: labelled, labels: [("source", source.rawValue)]))
        })
        promptCacheSaved = total("prompt_cache_saved_nano_usd",
                                 "Provider prompt-cache reads: their tokens at the input price minus what they were billed, in nano-USD.")
        promptCacheWritePremium = total("prompt_cache_write_premium_nano_usd",
                                        "Provider prompt-cache writes: what they were billed above the input price, in nano-USD.")
        estimatedUsage = total("estimated_usage_streams",
                               "Streams priced partly from estimated tokens: they ended before the upstream reported usage.")
        let anomaly = MetricNameDescriptor(namespace: "switchyard", metricName: "upstream_anomalies", unitName: "total",
                                           helpText: "Upstream values refused as sent (clamped, ignored, or the connection closed), by kind.")
        anomalies = UpstreamAnomaly.allCases.map { registry.makeCounter(descriptor: anomaly, labels: [("kind", $0.rawValue)]) }
        let waiters = MetricNameDescriptor(namespace: "switchyard", metricName: "upstream_pool", unitName: "waiters",
                                           helpText: "Requests waiting for a free connection to the provider (its pool_size is reached).")
        poolWaiters = Dictionary(uniqueKeysWithValues: Set(providers).map {
            ($0, registry.makeGauge(descriptor: waiters, labels: [("provider", $0)]))
        })
        let retried = MetricNameDescriptor(namespace: "switchyard", metricName: "upstream_retries", unitName: "total",
                                           helpText: "Attempts made again on the same deployment after a retryable failure, by provider.")
        retries = Dictionary(uniqueKeysWithValues: Set(providers).map { ($0, registry.makeCounter(descriptor: retried, labels: [("provider", $0)])) })
        let fellBack = MetricNameDescriptor(namespace: "switchyard", metricName: "upstream_fallbacks", unitName: "total",
                                            helpText: "Requests that moved on to their model's next deployment or fallback model, by model asked for.")
        fallbacks = Dictionary(uniqueKeysWithValues: names.map { ($0, registry.makeCounter(descriptor: fellBack, labels: [("model", $0)])) })
        let circuit = MetricNameDescriptor(namespace: "switchyard", metricName: "circuit", unitName: "state",
                                           helpText: "Each deployment's circuit breaker: 0 closed, 1 open, 2 half-open.")
        breakers = Dictionary(uniqueKeysWithValues: Set(deployments).map { ($0, registry.makeGauge(descriptor: circuit, labels: [("deployment", $0)])) })
        let depth = MetricNameDescriptor(namespace: "switchyard", metricName: "admission_queue", unitName: "depth",
                                         helpText: "Requests waiting for their deployment's budget, by deployment and priority.")
        queueDepths = Dictionary(uniqueKeysWithValues: Set(budgeted).map { deployment in
            (deployment, Priority.allCases.map { registry.makeGauge(descriptor: depth, labels: [("deployment", deployment), ("priority", $0.name)]) })
        })
        let wait = MetricNameDescriptor(namespace: "switchyard", metricName: "admission_wait", unitName: "seconds",
                                        helpText: "How long requests waited in a queue for their deployment's budget, by priority.")
        queueWaits = Priority.allCases.map { registry.makeDurationHistogram(descriptor: wait, labels: [("priority", $0.name)], buckets: Self.latencyBuckets) }
        let leftQueue = MetricNameDescriptor(namespace: "switchyard", metricName: "admission_refused", unitName: "total",
                                           helpText: "Requests that left a queue without their budget, by priority and reason (full, shed, expired).")
        queueRefusals = Dictionary(uniqueKeysWithValues: Priority.allCases.map { priority in
            (priority, Dictionary(uniqueKeysWithValues: [AdmissionRefusal.Reason.full, .shed, .expired].map { reason in
                (reason, registry.makeCounter(descriptor: leftQueue, labels: [("priority", priority.name), ("reason", "\(reason)")]))
            }))
        })
        let acceptedJobs = MetricNameDescriptor(namespace: "switchyard", metricName: "jobs_accepted", unitName: "total",
                                                helpText: "Background jobs accepted (POST /v1/jobs and the limits' queue step), by priority.")
        jobsAccepted = Priority.allCases.map { registry.makeCounter(descriptor: acceptedJobs, labels: [("priority", $0.name)]) }
        let endedJobs = MetricNameDescriptor(namespace: "switchyard", metricName: "jobs_ended", unitName: "total",
                                             helpText: "Background jobs run to their end on this instance, by priority and status.")
        jobsEnded = Dictionary(uniqueKeysWithValues: Priority.allCases.map { priority in
            (priority, Dictionary(uniqueKeysWithValues: [JobStatus.completed, .failed].map { status in
                (status, registry.makeCounter(descriptor: endedJobs, labels: [("priority", priority.name), ("status", status.rawValue)]))
            }))
        })
        let deliveries = MetricNameDescriptor(namespace: "switchyard", metricName: "webhook_deliveries", unitName: "total",
                                              helpText: "Job webhooks, by result: delivered, or given up after every retry.")
        webhookDeliveries = [true: registry.makeCounter(descriptor: deliveries, labels: [("result", "delivered")]),
                             false: registry.makeCounter(descriptor: deliveries, labels: [("result", "failed")])]
        let ledger = MetricNameDescriptor(namespace: "switchyard", metricName: "ledger_records", unitName: "total",
                                          helpText: "Ledger records, by result: written, or dropped because the ledger's buffer was full.")
        ledgerRecords = [true: registry.makeCounter(descriptor: ledger, labels: [("result", "written")]),
                         false: registry.makeCounter(descriptor: ledger, labels: [("result", "dropped")])]
        let alerts = MetricNameDescriptor(namespace: "switchyard", metricName: "budget_alerts", unitName: "total",
                                          helpText: "Budget threshold alerts this instance sent, by limit.")
        budgetAlerts = Dictionary(Set(limitNames).map { name in (name, registry.makeCounter(descriptor: alerts, labels: [("limit", name)])) },
                                  uniquingKeysWith: { first, _ in first })
        let sentBatches = MetricNameDescriptor(namespace: "switchyard", metricName: "batches", unitName: "total",
                                               helpText: "Batches for the providers' batch APIs, by result: submitted, or failed to submit.")
        batches = Dictionary(uniqueKeysWithValues: ["submitted", "submit_failed"].map {
            ($0, registry.makeCounter(descriptor: sentBatches, labels: [("result", $0)]))
        })
        let batchedRequests = MetricNameDescriptor(namespace: "switchyard", metricName: "batch_requests", unitName: "total",
                                                   helpText: "P2 job requests sent through a batch API, by outcome (late and full ones were sent on their own).")
        batchRequests = Dictionary(uniqueKeysWithValues: ["submitted", "answered", "failed", "late", "full"].map {
            ($0, registry.makeCounter(descriptor: batchedRequests, labels: [("outcome", $0)]))
        })
        batchSaved = total("batch_saved_nano_usd", "Requests answered through a batch API: their price sent alone minus the batch price, in nano-USD.")
        (self.durations, self.overheads, self.errors, self.timeToFirstToken, self.models) = (durations, overheads, errors, ttft, models)
        self.registry = registry
    }

    func modelLabel(_ model: String?) -> String {
        guard let model, models[model] != nil else { return "other" }
        return model
    }

    /// Counts one finished request by API and HTTP status.
    func request(api: APIFormat, status: Int, streamed: Bool, duration: Duration) {
        let series = Series(api: api, streamed: streamed)
        durations[series.index].record(duration)
        if status == 200 {
            okCounters[series.index].increment()
            return
        }
        let key = StatusSeries(api: api, status: status, streamed: streamed)
        let counter = statusCounters.withLock { $0[key] } ?? {
            let counter = registry.makeCounter(descriptor: Self.requestsDescriptor,
                                               labels: [("api", api.rawValue), ("status", String(status)), ("stream", String(streamed))])
            statusCounters.withLock { $0[key] = counter }
            return counter
        }()
        counter.increment()
    }

    /// Counts one error by its bounded code.
    func error(api: APIFormat, code: GatewayError.Code) {
        errors[ErrorSeries(api: api, code: code)]?.increment()
    }

    /// Time to the first streamed byte sent to the client.
    func timeToFirstToken(api: APIFormat, model: String?, _ duration: Duration) {
        timeToFirstToken[ModelSeries(api: api, model: modelLabel(model))]?.record(duration)
    }

    /// Time the gateway itself spent: end to end minus the time waiting on the upstream.
    func overhead(api: APIFormat, streamed: Bool, _ duration: Duration) {
        overheads[Series(api: api, streamed: streamed).index].record(max(.zero, duration))
    }

    public func record(_ record: CostRecord) {
        guard let counters = models[modelLabel(record.model)] else { return }
        let usage = record.usage
        if usage.inputTokens > 0 { counters.input.increment(by: Int64(usage.inputTokens)) }
        if usage.outputTokens > 0 { counters.output.increment(by: Int64(usage.outputTokens)) }
        if usage.cacheReadTokens > 0 { counters.cacheRead.increment(by: Int64(usage.cacheReadTokens)) }
        if usage.cacheWriteTokens > 0 { counters.cacheWrite.increment(by: Int64(usage.cacheWriteTokens)) }
        // swift-prometheus traps on a negative increment: never pass one.
        if record.cost.value > 0 { counters.cost.increment(by: record.cost.value) }
        if usage.wasClamped { upstreamAnomaly(.usage) }
        if record.usageEstimated { estimatedUsage.increment() }
        if record.batchSaved.value > 0 { batchSaved.increment(by: record.batchSaved.value) }
        if record.promptCacheSaved.value > 0 {
            promptCacheSaved.increment(by: record.promptCacheSaved.value)
        } else if record.promptCacheSaved.value < 0 {
            promptCacheWritePremium.increment(by: record.promptCacheSaved.value == .min ? .max : -record.promptCacheSaved.value)
        }
    }

    public func upstreamAnomaly(_ anomaly: UpstreamAnomaly) {
        if let index = UpstreamAnomaly.allCases.firstIndex(of: anomaly) { anomalies[index].increment() }
    }

    public func cache(_ kind: CacheKind, _ lookup: CacheLookup, model: String, saved: NanoUSD, caller: Caller?) {
        cacheLookups[Self.cacheIndex(kind, lookup)].increment()
        if saved.value > 0 { cacheSaved[kind]?.increment(by: saved.value) }
    }

    /// Position of a cache series in `cacheLookups`.
    static func cacheIndex(_ kind: CacheKind, _ lookup: CacheLookup) -> Int {
        let row = switch kind {
        case .exact: 0
        case .semantic: 1
        }
        let column = switch lookup {
        case .hit: 0
        case .miss: 1
        case .bypass: 2
        }
        return row * 3 + column
    }

    public func semanticRejected(_ reason: String) {
        semanticRejections[reason]?.increment()
    }

    public func falseHitReported() {
        falseHits.increment()
    }

    public func shadowChecked(agreed: Bool) {
        shadowChecks.increment()
        if !agreed { shadowDisagreements.increment() }
    }

    public func calibrationLabelled(source: CalibrationLabelSource) {
        calibrationLabels[source]?.increment()
    }

    func jobAccepted(_ priority: Priority) {
        jobsAccepted[priority.rawValue].increment()
    }

    func jobEnded(_ job: JobRecord) {
        jobsEnded[job.priority]?[job.status]?.increment()
    }

    func batch(_ event: BatchCollector.Event) {
        switch event {
        case .submitted(let requests):
            batches["submitted"]?.increment()
            if requests > 0 { batchRequests["submitted"]?.increment(by: Int64(requests)) }
        case .submitFailed: batches["submit_failed"]?.increment()
        case .answered: batchRequests["answered"]?.increment()
        case .failed: batchRequests["failed"]?.increment()
        case .late: batchRequests["late"]?.increment()
        case .full: batchRequests["full"]?.increment()
        }
    }

    func ledger(written: Int, dropped: Int) {
        if written > 0 { ledgerRecords[true]?.increment(by: Int64(written)) }
        if dropped > 0 { ledgerRecords[false]?.increment(by: Int64(dropped)) }
    }

    func budgetAlert(_ limit: String) {
        budgetAlerts[limit]?.increment()
    }

    func webhook(delivered: Bool) {
        webhookDeliveries[delivered]?.increment()
    }

    public func stateFailed(seam: String) {
        stateErrors[seam]?.increment()
    }

    public func limitRefused(_ name: String) {
        limitRefusals[name]?.increment()
    }

    public func degraded(_ kind: Degradation) {
        degradations[kind]?.increment()
    }

    public func limitStoreFailed() {
        stateErrors["limits"]?.increment()
    }

    public func upstreamRetried(provider: String) {
        retries[provider]?.increment()
    }

    public func upstreamFellBack(model: String) {
        (fallbacks[model] ?? fallbacks["other"])?.increment()
    }

    public func budgetStoreFailed() {
        stateErrors["budgets"]?.increment()
    }

    public func breakerBoardFailed() {
        stateErrors["breakers"]?.increment()
    }

    public func admissionWaited(_ priority: Priority, nanoseconds waited: Int64, refused: AdmissionRefusal.Reason?) {
        queueWaits[priority.rawValue].record(.nanoseconds(waited))
        if let refused { queueRefusals[priority]?[refused]?.increment() }
    }

    public func breakerChanged(deployment: String, to state: String) {
        breakers[deployment]?.set(Int64(state == "open" ? 1 : state == "half_open" ? 2 : 0))
    }

    /// The Prometheus text exposition.
    /// - Parameter poolWaiters: Requests now waiting for an upstream connection, by provider.
    /// - Parameter queued: Requests now waiting for their budget, by deployment and priority.
    public func render(poolWaiters waiting: [String: Int] = [:], queued: [String: [Priority: Int]] = [:]) -> [UInt8] {
        for (provider, gauge) in poolWaiters { gauge.set(Int64(waiting[provider] ?? 0)) }
        for (deployment, gauges) in queueDepths {
            for priority in Priority.allCases { gauges[priority.rawValue].set(Int64(queued[deployment]?[priority] ?? 0)) }
        }
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return buffer
    }
}
