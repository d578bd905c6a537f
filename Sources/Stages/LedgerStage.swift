import Limits
public import SwitchyardCore
public import SwitchyardModels

/// Right after auth: gives the request a `RequestTrail` that the stages below fill in (each priced call, the cache
/// that answered, the route's rule, every upstream attempt), and hands the ledger one record when the request ends —
/// a completion or an error at once, a stream when it ends however it ends (its hooks run after the cost stage's, so
/// the stream is priced by then).
public struct LedgerStage: GatewayStage {
    let recorder: any LedgerRecorder
    /// Unix milliseconds now.
    let clock: @Sendable () -> Int64

    public init(recorder: any LedgerRecorder, clock: @escaping @Sendable () -> Int64 = LedgerStage.unixMilliseconds) {
        self.recorder = recorder
        self.clock = clock
    }

    public static let unixMilliseconds: @Sendable () -> Int64 = { wallClockNanoseconds() / 1_000_000 }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        let (traced, record) = try start(request, context: context)
        do {
            return finish(try await next(request, traced), record: record, context: traced)
        } catch {
            failed(error, record: record, context: traced)
            throw error
        }
    }

    /// The record as far as the request tells it, and the context carrying its trail.
    @inline(never)
    func start(_ request: ChatRequest, context: GatewayContext) throws(GatewayError) -> (GatewayContext, LedgerRecord) {
        let caller = try context.requireCaller()
        var traced = context
        traced.trail = RequestTrail()
        // The arrival, on the wall clock: now less what passed since the request's head came in.
        let waited = (ContinuousClock.now - context.receivedAt).nanoseconds / 1_000_000
        let record = LedgerRecord(requestID: context.requestID, time: clock() - max(waited, 0), tenant: caller.tenant,
                                  user: caller.user, tier: caller.tier, feature: caller.feature, api: context.clientFormat,
                                  requested: Self.bounded(request.model), streamed: request.stream, job: context.runsAsJob)
        return (traced, record)
    }

    @inline(never)
    func finish(_ response: GatewayResponse, record: LedgerRecord, context: GatewayContext) -> GatewayResponse {
        guard let trail = context.trail else { return response }
        var record = record
        let receivedAt = context.receivedAt
        switch response {
        case .completion(let completion):
            record.streamed = false
            record.cache = completion.cache?.status.rawValue
            record.degraded = completion.limits?.degraded
            record.escalated = completion.routing?.cascade?.accepted == false
            if let job = completion.acceptedJob {
                record.queuedJob = job
                record.status = 202
            }
            let latency = Self.milliseconds(since: receivedAt)
            record.latencyMilliseconds = latency
            record.timeToFirstTokenMilliseconds = latency
            RequestTrail.fill(&record, from: trail.snapshot)
            recorder.record(record)
        case .stream(let stream):
            record.streamed = true
            record.cache = stream.cache?.status.rawValue
            record.degraded = stream.limits?.degraded
            record.escalated = stream.routing?.cascade?.accepted == false
            let recorder = self.recorder
            stream.lifecycle.onChunks { _ in trail.firstEvent(at: .now) }
            stream.lifecycle.onTermination { [record] outcome, _ in
                var record = record
                switch outcome {
                case .completed: break
                case .failed(let error):
                    record.outcome = "failed"
                    record.error = error.code.rawValue
                case .cancelled:
                    record.outcome = "cancelled"
                }
                record.latencyMilliseconds = Self.milliseconds(since: receivedAt)
                let state = trail.snapshot
                record.timeToFirstTokenMilliseconds = state.firstEvent.map { Self.milliseconds($0 - receivedAt) }
                RequestTrail.fill(&record, from: state)
                recorder.record(record)
            }
        }
        return response
    }

    @inline(never)
    func failed(_ error: any Error, record: LedgerRecord, context: GatewayContext) {
        var record = record
        if let error = error as? GatewayError {
            record.status = error.httpStatus(for: context.clientFormat)
            record.error = error.code.rawValue
            record.outcome = "failed"
        } else if error is CancellationError {
            // The client went away before an answer (nginx's 499: no status was sent).
            record.status = 499
            record.outcome = "cancelled"
        } else {
            record.status = 500
            record.error = GatewayError.Code.internalError.rawValue
            record.outcome = "failed"
        }
        record.latencyMilliseconds = Self.milliseconds(since: context.receivedAt)
        if let trail = context.trail { RequestTrail.fill(&record, from: trail.snapshot) }
        recorder.record(record)
    }

    /// A client's model name, kept to 256 bytes in the record (an unknown one is any string the client sent).
    static func bounded(_ name: String) -> String {
        name.utf8.count <= 256 ? name : String(decoding: name.utf8.prefix(256), as: UTF8.self)
    }

    static func milliseconds(since start: ContinuousClock.Instant) -> Double { milliseconds(ContinuousClock.now - start) }

    static func milliseconds(_ duration: Duration) -> Double { Double(duration.nanoseconds) / 1e6 }
}
