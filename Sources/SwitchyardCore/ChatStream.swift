public import ServerSentEvents
public import SwitchyardModels

/// One upstream stream event: its bytes as received, and what it means in canonical form.
public struct StreamEvent: Sendable {
    /// The event exactly as the upstream sent it (relayed untouched to same-format clients), or `nil` when
    /// the event was synthesised (cache replay, tests).
    public var raw: ServerSentEvent?
    public var chunks: [ChatChunk]

    public init(raw: ServerSentEvent? = nil, chunks: [ChatChunk]) {
        self.raw = raw
        self.chunks = chunks
    }
}

/// How a stream ended.
public enum StreamOutcome: Sendable {
    /// The upstream finished cleanly.
    case completed
    /// The upstream failed or was cut mid-way; the client got an error event.
    case failed(GatewayError)
    /// The client went away (or the stream was dropped unread).
    case cancelled
}

/// Observes a stream and runs end-of-stream work exactly once, however the stream ends.
public final class StreamLifecycle: Sendable {
    private struct State: Sendable {
        var hooks: [@Sendable (StreamOutcome, Usage?) -> Void] = []
        var observers: [@Sendable ([ChatChunk]) -> Void] = []
        var usage: Usage?
        /// UTF-8 bytes of text and tool-call arguments seen so far (for estimating the output of a stream that
        /// ended without a usage report).
        var outputBytes = 0
        var ended = false
    }

    private let state = Locked(State())

    init() {}

    /// Registers end-of-stream work (cost, cache fill, permit release, settlement).
    /// Hooks run in registration order, on the task that ends the stream, outside any lock.
    public func onTermination(_ hook: @escaping @Sendable (StreamOutcome, Usage?) -> Void) {
        let runNow = state.withLock { state -> Bool in
            if state.ended { return true }
            state.hooks.append(hook)
            return false
        }
        if runNow { hook(.cancelled, nil) }
    }

    /// Registers an observer of every event's chunks as the stream passes (a cache filling from the stream).
    /// Observers run on the task that reads the stream, in order, before the event reaches the client.
    public func onChunks(_ observer: @escaping @Sendable ([ChatChunk]) -> Void) {
        state.withLock { $0.observers.append(observer) }
    }

    func observe(_ chunks: [ChatChunk]) {
        let observers = state.withLock { $0.observers }
        for observer in observers { observer(chunks) }
        var outputBytes = 0
        for chunk in chunks {
            switch chunk {
            case .text(_, let text), .toolCallArguments(_, _, let text): outputBytes += text.utf8.count
            default: break
            }
        }
        if outputBytes > 0 { state.withLock { $0.outputBytes += outputBytes } }
        for case .usage(let usage) in chunks {
            state.withLock { $0.usage = usage }
        }
        for case .start(_, _, let usage?) in chunks {
            state.withLock { $0.usage = usage }
        }
    }

    /// Output tokens estimated from the text and tool-call arguments seen so far, at four bytes per token.
    public var estimatedOutputTokens: Int {
        state.withLock { ($0.outputBytes + 3) / 4 }
    }

    /// Ends the stream with `outcome`; later calls do nothing.
    public func end(_ outcome: StreamOutcome) {
        let (hooks, usage) = state.withLock { state -> ([@Sendable (StreamOutcome, Usage?) -> Void], Usage?) in
            guard !state.ended else { return ([], nil) }
            state.ended = true
            defer { state.hooks = [] }
            return (state.hooks, state.usage)
        }
        for hook in hooks { hook(outcome, usage) }
    }

    deinit {
        end(.cancelled)
    }
}

/// A pull-based stream of upstream events in the upstream's wire format.
///
/// The next upstream read happens only when the consumer asks for the next event, so a slow client slows the
/// upstream read instead of filling a buffer. Iterate it once. When iteration stops early (the client went
/// away), call `lifecycle.end(.cancelled)`; a clean end and a failure are recorded by the iterator itself.
public struct ChatStream: AsyncSequence, Sendable {
    public typealias Element = StreamEvent

    /// The wire format of `StreamEvent.raw`.
    public let format: APIFormat
    /// Observes the stream and runs end-of-stream work exactly once.
    public let lifecycle: StreamLifecycle
    /// How long the upstream took to send its first event (for the gateway-overhead metric).
    public var upstreamTimeToFirstEvent: Duration = .zero
    /// What the response caches did (`nil` when no cache stage ran).
    public var cache: CacheOutcome?
    /// What the routing stage decided (`nil` for an explicit model name and for cache hits).
    public var routing: RoutingOutcome?
    /// The tightest rate limits that applied (`nil` without limits).
    public var limits: LimitStatus?
    /// Whether the events were made by the gateway (a cache replay) rather than relayed from an upstream: they
    /// carry no raw bytes, and the client's encoder must open and close the stream itself.
    public private(set) var isSynthesized = false
    private let source: Source

    /// Creates a stream from a pull function.
    /// - Parameters:
    ///   - format: The format of the raw events.
    ///   - next: Returns the next event, `nil` at a clean end, or throws `GatewayError` when the stream fails.
    ///     Called from one task at a time.
    public init(format: APIFormat, next: @escaping () async throws -> StreamEvent?) {
        self.format = format
        self.lifecycle = StreamLifecycle()
        self.source = Source(next)
    }

    /// A stream that yields `events` and then ends cleanly (tests, cache replay).
    public init(format: APIFormat, events: [StreamEvent]) {
        let remaining = Locked(events[...])
        self.init(format: format) {
            remaining.withLock { queue -> StreamEvent? in queue.popFirst() }
        }
        isSynthesized = events.allSatisfy { $0.raw == nil }
    }

    public func makeAsyncIterator() -> Iterator {
        Iterator(source: source, lifecycle: lifecycle)
    }

    /// Pulls events; records the outcome in the lifecycle when the stream ends or fails.
    public struct Iterator: AsyncIteratorProtocol {
        let source: Source
        let lifecycle: StreamLifecycle

        public mutating func next() async throws -> StreamEvent? {
            do {
                guard let event = try await source.next() else {
                    lifecycle.end(.completed)
                    return nil
                }
                lifecycle.observe(event.chunks)
                return event
            } catch let error as GatewayError {
                lifecycle.end(.failed(error))
                throw error
            } catch is CancellationError {
                lifecycle.end(.cancelled)
                throw CancellationError()
            } catch {
                let wrapped = GatewayError(.upstreamError, "upstream stream failed")
                lifecycle.end(.failed(wrapped))
                throw wrapped
            }
        }
    }

    /// Holds the non-`Sendable` pull function.
    ///
    /// `@unchecked Sendable`: a stream is consumed by one task at a time (the provider task reads the first event,
    /// then hands the stream to the response writer), so the closure is never called concurrently.
    public final class Source: @unchecked Sendable {
        let next: () async throws -> StreamEvent?
        init(_ next: @escaping () async throws -> StreamEvent?) { self.next = next }
    }
}
