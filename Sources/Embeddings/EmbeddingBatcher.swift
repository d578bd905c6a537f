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

    /// Embeds token sequences (from `encoder.tokenizer`), batched with other callers.
    public func embed(_ ids: [[Int32]]) async -> [[Float]] {
        guard !ids.isEmpty else { return [] }
        return await withCheckedContinuation { continuation in
            let start = state.withLock { state -> Bool in
                state.queue.append(Pending(ids: ids, continuation: continuation))
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
