import Logging
import ServiceLifecycle
import SwitchyardCore
import Synchronization

/// Where raw ledger records go (files, a database). `write` is called with one batch at a time, never concurrently.
public protocol LedgerSink: Sendable {
    func write(_ records: [LedgerRecord]) async throws
}

/// The ledger's writer: records go into a bounded buffer on the request path (a full buffer drops the record and
/// counts it — a request never waits for the ledger), and every `flushInterval` the buffer is summed per
/// `UsageKey` into the aggregates' store and handed to the sink. Flushes run one at a time (a `flush()` returns once
/// every record made before it is written).
public final class LedgerWriter: LedgerRecorder, Service {
    private struct State {
        var records: [LedgerRecord] = []
        var dropped = 0
        var flushing = false
        var waiting: [CheckedContinuation<[LedgerRecord], Never>] = []
    }

    private let state = Mutex(State())
    let capacity: Int
    let interval: Duration
    let usage: any UsageStore
    let sink: (any LedgerSink)?
    /// This instance's recent figures for the dashboard, fed at each flush.
    let live: LiveStats?
    let logger: Logger
    /// Told how many records were written and dropped since last told.
    let counted: @Sendable (_ written: Int, _ dropped: Int) -> Void
    /// Told when a store fails: `usage_write` (the aggregates) or `ledger_sink`.
    let failed: @Sendable (String) -> Void

    public init(usage: any UsageStore, sink: (any LedgerSink)?, live: LiveStats? = nil, capacity: Int = 20_000,
                interval: Duration = .milliseconds(500), logger: Logger, counted: @escaping @Sendable (Int, Int) -> Void = { _, _ in },
                failed: @escaping @Sendable (String) -> Void = { _ in }) {
        self.usage = usage
        self.sink = sink
        self.live = live
        self.capacity = max(capacity, 1)
        self.interval = max(interval, .milliseconds(1))
        self.logger = logger
        self.counted = counted
        self.failed = failed
    }

    public func record(_ record: LedgerRecord) {
        let capacity = self.capacity
        state.withLock { state in
            if state.records.count >= capacity {
                state.dropped += 1
            } else {
                state.records.append(record)
            }
        }
    }

    /// Records waiting to be written.
    public var pending: Int { state.withLock { $0.records.count } }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await Task.sleep(for: self.interval)
                await self.flush()
            }
        }
        // What the last requests of a drained server left.
        await flush()
    }

    /// Writes every record made so far (waiting for a flush already under way first).
    public func flush() async {
        let records = await turn()
        let dropped = state.withLock { state in
            defer { state.dropped = 0 }
            return state.dropped
        }
        if !records.isEmpty || dropped > 0 { counted(records.count, dropped) }
        if !records.isEmpty {
            await write(records)
        }
        handOver()
    }

    /// Waits for this caller's turn to flush, and takes the buffer.
    private func turn() async -> [LedgerRecord] {
        await withCheckedContinuation { continuation in
            let taken: [LedgerRecord]? = state.withLock { state in
                guard !state.flushing else {
                    state.waiting.append(continuation)
                    return nil
                }
                state.flushing = true
                defer { state.records = [] }
                return state.records
            }
            if let taken { continuation.resume(returning: taken) }
        }
    }

    /// Gives the turn to the next waiting flush (with the records made meanwhile), or ends it.
    private func handOver() {
        let next: (CheckedContinuation<[LedgerRecord], Never>, [LedgerRecord])? = state.withLock { state in
            guard !state.waiting.isEmpty else {
                state.flushing = false
                return nil
            }
            let waiter = state.waiting.removeFirst()
            defer { state.records = [] }
            return (waiter, state.records)
        }
        if let (waiter, records) = next { waiter.resume(returning: records) }
    }

    private func write(_ records: [LedgerRecord]) async {
        live?.add(records)
        var batch: [UsageKey: UsageTotals] = [:]
        for record in records { batch[UsageKey(record), default: UsageTotals()].add(record) }
        do {
            try await usage.add(batch)
        } catch {
            failed("usage_write")
            logger.warning("ledger aggregates not written", metadata: ["switchyard.records": "\(records.count)", "switchyard.reason": "\(error)"])
        }
        guard let sink else { return }
        do {
            try await sink.write(records)
        } catch {
            failed("ledger_sink")
            logger.warning("ledger records not written to the sink", metadata: ["switchyard.records": "\(records.count)", "switchyard.reason": "\(error)"])
        }
    }
}
