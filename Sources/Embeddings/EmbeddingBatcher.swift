import NIOPosix
import SwitchyardCore

/// Runs the encoder off Swift's cooperative pool, on one dedicated thread, and batches concurrent requests:
/// whatever arrives while a batch is computing is embedded together in the next pass.
///
/// Fair: each pass takes at most `sliceTokens` from each waiting request in turn (at least one sequence), so a
/// request of thousands of inputs is computed across many passes and a one-line query that arrives meanwhile waits
/// for at most the pass being computed, not for the whole large request. A pass is at most `maximumBatchTokens`,
/// which also bounds the encoder's working memory.
public final class EmbeddingBatcher: Sendable {
    final class Pending: @unchecked Sendable {
        // `@unchecked`: touched only under `state`'s lock (queueing, slicing) or by the pool thread that owns the
        // slice it took (results), never both at once for the same range.
        let ids: [[Int32]]
        var results: [[Float]]
        /// The next sequence to hand to a pass.
        var next = 0
        /// Sequences computed so far.
        var done = 0
        let continuation: CheckedContinuation<[[Float]], Never>

        init(ids: [[Int32]], continuation: CheckedContinuation<[[Float]], Never>) {
            self.ids = ids
            self.results = Array(repeating: [], count: ids.count)
            self.continuation = continuation
        }
    }

    struct State: Sendable {
        var queue: [Pending] = []
        var draining = false
        /// Tokens waiting in the queue (not counting the batch being computed).
        var queuedTokens = 0
    }

    public let encoder: MiniLMEncoder
    let pool: NIOThreadPool
    let state = Locked(State())
    /// Upper bound on tokens per pass.
    let maximumBatchTokens: Int
    /// Upper bound on one request's tokens in one pass, when others wait.
    let sliceTokens: Int

    public init(encoder: MiniLMEncoder, maximumBatchTokens: Int = 8192, sliceTokens: Int = 2048) {
        self.encoder = encoder
        self.maximumBatchTokens = maximumBatchTokens
        self.sliceTokens = sliceTokens
        self.pool = NIOThreadPool(numberOfThreads: 1)
        pool.start()
    }

    deinit {
        pool.shutdownGracefully { _ in }
    }

    /// Tokens waiting for the encoder (not counting the batch it is computing).
    public var queuedTokens: Int { state.withLock { $0.queuedTokens } }

    /// Embeds token sequences (from `encoder.tokenizer`), batched with other callers.
    public func embed(_ ids: [[Int32]]) async -> [[Float]] {
        await embed(ids, unlessQueuedTokensExceed: nil) ?? []
    }

    /// Embeds token sequences unless more than `limit` tokens already wait: then returns `nil` at once, so that a
    /// caller for whom the embedding is optional (the semantic cache) never waits behind a backlog.
    public func embed(_ ids: [[Int32]], unlessQueuedTokensExceed limit: Int?) async -> [[Float]]? {
        guard !ids.isEmpty else { return [] }
        let tokens = ids.reduce(0) { $0 + $1.count }
        if let limit, state.withLock({ $0.queuedTokens }) > limit { return nil }
        return await withCheckedContinuation { continuation in
            let pending = Pending(ids: ids, continuation: continuation)
            let start = state.withLock { state -> Bool in
                state.queue.append(pending)
                state.queuedTokens += tokens
                defer { state.draining = true }
                return !state.draining
            }
            if start {
                pool.submit { _ in self.drain() }
            }
        }
    }

    /// One pass's share of one request: its sequences `range`.
    struct Slice {
        var pending: Pending
        var range: Range<Int>
    }

    /// The next pass: a slice of each waiting request in arrival order, until the pass is full.
    func nextPass(_ state: inout State) -> [Slice] {
        var slices: [Slice] = []
        var tokens = 0
        for pending in state.queue where pending.next < pending.ids.count {
            guard tokens < maximumBatchTokens else { break }
            let start = pending.next
            var end = start
            var taken = 0
            let budget = min(sliceTokens, maximumBatchTokens - tokens)
            while end < pending.ids.count && (end == start || taken + pending.ids[end].count <= budget) {
                taken += pending.ids[end].count
                end += 1
            }
            pending.next = end
            tokens += taken
            state.queuedTokens -= taken
            slices.append(Slice(pending: pending, range: start..<end))
        }
        return slices
    }

    /// Runs on the pool thread until the queue is empty.
    func drain() {
        while true {
            let slices = state.withLock { state -> [Slice] in
                let slices = nextPass(&state)
                if slices.isEmpty { state.draining = false }
                return slices
            }
            guard !slices.isEmpty else { return }
            let vectors = encoder.embed(batch: slices.flatMap { Array($0.pending.ids[$0.range]) })
            var offset = 0
            var finished: [Pending] = []
            for slice in slices {
                for index in slice.range {
                    slice.pending.results[index] = vectors[offset]
                    offset += 1
                }
                let complete = state.withLock { state -> Bool in
                    slice.pending.done += slice.range.count
                    guard slice.pending.done == slice.pending.ids.count else { return false }
                    state.queue.removeAll { $0 === slice.pending }
                    return true
                }
                if complete { finished.append(slice.pending) }
            }
            for pending in finished { pending.continuation.resume(returning: pending.results) }
        }
    }
}
