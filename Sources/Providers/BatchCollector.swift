import Admission
public import ServiceLifecycle
public import SwitchyardCore
public import SwitchyardModels
import NIOCore
import Synchronization

/// The I/O shell around `BatchBook` for one provider: requests wait here while their batch collects, is sent, and
/// runs; a task per sent batch polls it and hands each request its result. A request gives up its wait when its
/// task is cancelled or at its `until` (it is then sent on its own by its caller); a batch nobody waits for any
/// more is cancelled at the provider.
public final class BatchCollector: Service, Sendable {
    /// What happened to one request.
    public enum Outcome: Sendable {
        case answered(ByteBuffer)
        case failed(GatewayError)
        /// Not taken: too many requests are pending.
        case full
        /// Its `until` came before its answer.
        case late
    }

    /// Counted by the gateway's metrics.
    public enum Event: Sendable, Hashable {
        case submitted(requests: Int)
        case submitFailed
        case answered, failed, late, full
    }

    struct Entry {
        var body: ByteBuffer
        var until: Int64
        var waiter: CheckedContinuation<Outcome, Never>?
        /// Set when the answer came before its waiter was installed.
        var outcome: Outcome?
    }

    struct State {
        var book: BatchBook<String>
        var entries: [String: Entry] = [:]
        /// Batches full before their window ended, to be sent at the next tick.
        var ready: [BatchBook<String>.Batch] = []
        var stopped = false
    }

    let upstream: any BatchUpstream
    let settings: BatchSettings
    let clock: @Sendable () -> Int64
    let sleep: @Sendable (Duration) async throws -> Void
    let observe: @Sendable (Event) -> Void
    private let state: Mutex<State>
    private let ids = Atomic<UInt64>(0)
    private let prefix = String(UInt64.random(in: 0...UInt64.max), radix: 36)

    /// - Parameters:
    ///   - clock: Wall-clock nanoseconds (the jobs' deadlines are wall-clock times).
    public init(upstream: any BatchUpstream, settings: BatchSettings, clock: @escaping @Sendable () -> Int64,
                sleep: @escaping @Sendable (Duration) async throws -> Void = { try await Task.sleep(for: $0) },
                observe: @escaping @Sendable (Event) -> Void = { _ in }) {
        self.upstream = upstream
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.observe = observe
        state = Mutex(State(book: BatchBook(settings: .init(window: settings.window.nanoseconds, maxRequests: settings.maxRequests,
                                                           maxPending: settings.maxPending))))
    }

    /// Waits for the answer to `body` (a request for `upstreamModel` in the provider's format) through a batch.
    /// - Parameter joined: Called once the request has joined a batch.
    public func answer(_ body: ByteBuffer, upstreamModel: String, until: Int64, joined: @Sendable () -> Void) async -> Outcome {
        let now = clock()
        guard until > now else { return .late }
        let id = "sy-\(prefix)-\(String(ids.add(1, ordering: .relaxed).newValue, radix: 36))"
        let admitted = state.withLock { state -> Bool in
            guard !state.stopped else { return false }
            switch state.book.join(id, key: upstreamModel, now: now) {
            case .full: return false
            case .waiting: break
            case .send(let batch): state.ready.append(batch)
            }
            state.entries[id] = Entry(body: body, until: until)
            return true
        }
        guard admitted else {
            observe(.full)
            return .full
        }
        joined()
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let now = state.withLock { state -> Outcome? in
                    guard var entry = state.entries[id] else { return .late }
                    if let outcome = entry.outcome {
                        state.entries[id] = nil
                        return outcome
                    }
                    entry.waiter = continuation
                    state.entries[id] = entry
                    return nil
                }
                if let now { continuation.resume(returning: now) }
            }
        } onCancel: {
            self.finish(id, .failed(GatewayError(.upstreamError, "cancelled")), leaving: true)
        }
    }

    /// Ends one request's wait with `outcome` (kept for a waiter not installed yet). `leaving`: it also leaves its
    /// open batch, if it is still in one.
    private func finish(_ id: String, _ outcome: Outcome, leaving: Bool = false) {
        let waiter = state.withLock { state -> CheckedContinuation<Outcome, Never>? in
            if leaving { state.book.leave(id) }
            guard var entry = state.entries[id] else { return nil }
            if let waiter = entry.waiter {
                state.entries[id] = nil
                return waiter
            }
            if leaving {
                state.entries[id] = nil
            } else {
                entry.outcome = outcome
                state.entries[id] = entry
            }
            return nil
        }
        waiter?.resume(returning: outcome)
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                let tick = max(min(self.settings.window, self.settings.pollInterval, .milliseconds(250)), .milliseconds(5))
                while !Task.isCancelled {
                    for batch in self.takeDue() {
                        group.addTask { await self.process(batch) }
                    }
                    try? await self.sleep(tick)
                }
            }
        }
        // Whoever still waits is sent on its own (or its job taken over by another instance).
        let waiters = state.withLock { state -> [CheckedContinuation<Outcome, Never>] in
            state.stopped = true
            let waiters = state.entries.values.compactMap(\.waiter)
            state.entries.removeAll()
            return waiters
        }
        for waiter in waiters { waiter.resume(returning: .late) }
    }

    /// The batches to send now, and the requests whose wait is over.
    private func takeDue() -> [BatchBook<String>.Batch] {
        let now = clock()
        var late: [String] = []
        let due = state.withLock { state -> [BatchBook<String>.Batch] in
            var due = state.ready
            state.ready.removeAll()
            due += state.book.due(now: now)
            for (id, entry) in state.entries where entry.until <= now && entry.outcome == nil { late.append(id) }
            return due
        }
        for id in late {
            observe(.late)
            finish(id, .late, leaving: true)
        }
        return due
    }

    private func waiting(_ ids: [String]) -> [BatchRequestItem] {
        state.withLock { state in ids.compactMap { id in state.entries[id].map { BatchRequestItem(id: id, body: $0.body) } } }
    }

    /// Sends one batch, follows it to its end, and hands out its results.
    func process(_ batch: BatchBook<String>.Batch) async {
        defer { state.withLock { $0.book.answered(batch.ids.count) } }
        let items = waiting(batch.ids)
        guard !items.isEmpty else { return }
        let model = batch.key
        var submitted: String?
        var failure = GatewayError(.upstreamError, "the batch could not be sent", upstreamStatus: 502)
        for attempt in 0..<3 {
            do {
                submitted = try await upstream.submitBatch(items, upstreamModel: model)
                break
            } catch {
                failure = error
                // An invalid batch is not sent again; a failing provider is, twice.
                guard error.isRetryable, attempt < 2 else { break }
                do { try await sleep(.seconds(1 << attempt)) } catch { break }
            }
        }
        guard let id = submitted else {
            observe(.submitFailed)
            for item in items { finish(item.id, .failed(failure)) }
            return
        }
        observe(.submitted(requests: items.count))
        // OpenAI's and Anthropic's batches end within 24 hours; an hour more for the last polls.
        let giveUp = clock() &+ 25 * 3_600_000_000_000
        var errors = 0
        polling: while true {
            do { try await sleep(settings.pollInterval) } catch { break }
            guard !waiting(batch.ids).isEmpty else {
                await upstream.cancelBatch(id, upstreamModel: model)
                return
            }
            guard clock() < giveUp else {
                failure = GatewayError(.upstreamError, "batch \(id) did not end in its completion window", upstreamStatus: 504)
                break
            }
            do {
                switch try await upstream.pollBatch(id, upstreamModel: model) {
                case .running:
                    errors = 0
                    continue polling
                case .failed(let reason):
                    failure = GatewayError(.upstreamError, reason, upstreamStatus: 502)
                    break polling
                case .ended:
                    let results = try await upstream.batchResults(id, upstreamModel: model)
                    for item in items {
                        switch results[item.id] {
                        case .answered(let body):
                            observe(.answered)
                            finish(item.id, .answered(body))
                        case .failed(let error):
                            observe(.failed)
                            finish(item.id, .failed(error))
                        case nil:
                            observe(.failed)
                            finish(item.id, .failed(GatewayError(.upstreamError, "batch \(id) has no result for the request", upstreamStatus: 502)))
                        }
                    }
                    return
                }
            } catch {
                // A provider briefly unreachable: polled again; ten failures in a row end the wait.
                errors += 1
                failure = error
                if errors >= 10 { break }
            }
        }
        for item in items {
            observe(.failed)
            finish(item.id, .failed(failure))
        }
    }
}

/// A provider whose P2 jobs may go through its batch API (`batch: auto`): a request with a `BatchTicket` that
/// applies waits for its batch; any other is sent on its own. A batch that fails, is full or comes too late gives
/// the ticket up and throws a retryable error, so the next attempt is a call of its own (the attempts stage then
/// reserves the deployment's budget for it, which a batched request does not take).
public struct BatchingProvider: ProviderClient {
    let inner: HTTPProvider
    public let collector: BatchCollector

    public init(inner: HTTPProvider, collector: BatchCollector) {
        self.inner = inner
        self.collector = collector
    }

    public func send(_ request: ChatRequest, route: ModelRoute, context: GatewayContext) async throws -> GatewayResponse {
        guard let ticket = context.batchTicket, !request.stream, ticket.applies(to: route, now: collector.clock()) else {
            return try await inner.send(request, route: route, context: context)
        }
        let (upstream, _) = try inner.prepare(request, route: route, context: context)
        let started = ContinuousClock.now
        switch await collector.answer(upstream.body, upstreamModel: route.upstreamModel, until: ticket.waitUntil,
                                      joined: { ticket.joined() }) {
        case .answered(let body):
            return .completion(try inner.batchCompletion(body, upstreamModel: route.upstreamModel, started: started, context: context))
        case .failed(let error) where !error.isRetryable:
            // The request itself was refused: it would be refused alone too.
            throw error
        case .failed(let error):
            ticket.giveUp()
            throw error
        case .full, .late:
            ticket.giveUp()
            throw GatewayError(.overloaded, "the batch did not take the request in time; it is sent on its own", retryAfter: .zero)
        }
    }
}
