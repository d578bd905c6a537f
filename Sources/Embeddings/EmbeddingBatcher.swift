import NIOPosix
import SwitchyardCore

/// Runs the encoder off Swift's cooperative pool, on one dedicated thread, and batches concurrent requests:
/// whatever arrives while a batch is computing is embedded together in the next pass.
public final class EmbeddingBatcher: Sendable {
    struct Pending: Sendable {
        var ids: [[Int32]]
        var continuation: CheckedContinuation<[[Float]], Never>
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
    /// Upper bound on tokens per pass, so one huge request does not delay the others for long.
    let maximumBatchTokens: Int

    public init(encoder: MiniLMEncoder, maximumBatchTokens: Int = 8192) {
        self.encoder = encoder
        self.maximumBatchTokens = maximumBatchTokens
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
            let start = state.withLock { state -> Bool in
                state.queue.append(Pending(ids: ids, continuation: continuation))
                state.queuedTokens += tokens
                defer { state.draining = true }
                return !state.draining
            }
            if start {
                pool.submit { _ in self.drain() }
            }
        }
    }

    /// Runs on the pool thread until the queue is empty.
    func drain() {
        while true {
            let batch = state.withLock { state -> [Pending] in
                var taken: [Pending] = []
                var tokens = 0
                while let next = state.queue.first {
                    let size = next.ids.reduce(0) { $0 + $1.count }
                    if !taken.isEmpty, tokens + size > maximumBatchTokens { break }
                    taken.append(state.queue.removeFirst())
                    tokens += size
                    state.queuedTokens -= size
                }
                if taken.isEmpty { state.draining = false }
                return taken
            }
            guard !batch.isEmpty else { return }
            let vectors = encoder.embed(batch: batch.flatMap(\.ids))
            var offset = 0
            for pending in batch {
                pending.continuation.resume(returning: Array(vectors[offset..<(offset + pending.ids.count)]))
                offset += pending.ids.count
            }
        }
    }
}
