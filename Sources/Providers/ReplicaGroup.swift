public import Admission
public import SwitchyardCore
public import SwitchyardModels
import Synchronization

/// A provider of several self-hosted replicas of one server (YAML `replicas:`): each request goes to the replica
/// the balancer chooses (by default the less loaded of two drawn at random, load being the tokens promised to the
/// requests in flight there: their prompts plus their expected outputs), and is counted there until its answer or
/// stream ends. The expected output is `max_tokens` clipped by a moving average of the model's real answers, per
/// upstream model. Replicas that fail again and again are ejected for a while, and come back in slow start.
public final class ReplicaGroup: ProviderClient {
    let members: [any ProviderClient]
    private let balancer: Mutex<ReplicaBalancer>
    /// Per upstream model (the configuration's, so bounded).
    private let estimates = Mutex<[String: OutputLengthEstimate]>([:])
    let clock: @Sendable () -> Int64

    public init(members: [any ProviderClient], settings: ReplicaBalancer.Settings = ReplicaBalancer.Settings(),
                clock: @escaping @Sendable () -> Int64 = ReplicaGroup.monotonicNanoseconds) {
        self.members = members
        balancer = Mutex(ReplicaBalancer(count: members.count, settings: settings))
        self.clock = clock
    }

    public static let monotonicNanoseconds: @Sendable () -> Int64 = {
        let origin = ContinuousClock.now
        return { (ContinuousClock.now - origin).nanoseconds }
    }()

    /// Each replica's state now (for tests and reports).
    public var replicas: [ReplicaBalancer.Replica] { balancer.withLock { $0.replicas } }

    public func send(_ request: ChatRequest, route: ModelRoute, context: GatewayContext) async throws -> GatewayResponse {
        let model = route.upstreamModel
        let expected = estimates.withLock { $0[model]?.expected(maxTokens: request.maxTokens) }
            ?? OutputLengthEstimate().expected(maxTokens: request.maxTokens)
        let tokens = Int64(request.estimatedInputTokens) &+ expected
        let now = clock()
        let index = balancer.withLock { balancer in
            var random = SystemRandomNumberGenerator()
            return balancer.choose(tokens: tokens, now: now, using: &random)
        }
        let response: GatewayResponse
        do {
            response = try await members[index].send(request, route: route, context: context)
        } catch {
            // An invalid request says nothing of the replica's health.
            let unwell = (error as? GatewayError).map { [.upstreamError, .upstreamTimeout, .overloaded, .rateLimited].contains($0.code) } ?? true
            finished(index, tokens: tokens, success: !unwell, model: model, output: nil)
            throw error
        }
        switch response {
        case .completion(let completion):
            finished(index, tokens: tokens, success: true, model: model, output: completion.usage.outputTokens)
        case .stream(let stream):
            // As the stream goes, its work leaves the replica's count: the prompt at the first token (the replica has
            // read it), then the output, a step at a time, up to what was expected.
            let prompt = Int64(request.estimatedInputTokens)
            let progress = Mutex(StreamProgress())
            stream.lifecycle.onChunks { [self] chunks in
                let pieces = chunks.reduce(0) { count, chunk in
                    switch chunk {
                    case .text, .toolCallArguments: count + 1
                    default: count
                    }
                }
                guard pieces > 0 else { return }
                let done = progress.withLock { $0.advance(pieces: pieces, prompt: prompt, expected: expected) }
                if done > 0 { balancer.withLock { $0.progressed(index, tokens: done) } }
            }
            stream.lifecycle.onTermination { [self] outcome, reported in
                let failed = if case .failed = outcome { true } else { false }
                let completed = if case .completed = outcome { true } else { false }
                let taken = progress.withLock { $0.taken }
                finished(index, tokens: tokens - taken, success: !failed, model: model, output: completed ? reported?.outputTokens : nil)
            }
        }
        return response
    }

    /// A stream's work taken from its replica's count so far.
    struct StreamProgress {
        var started = false
        var output: Int64 = 0
        var taken: Int64 = 0
        /// Output tokens are taken in steps of this many (one lock of the balancer per step, not per event).
        static let step: Int64 = 16

        /// `pieces` more events with output arrived: what to take from the count now.
        mutating func advance(pieces: Int, prompt: Int64, expected: Int64) -> Int64 {
            var now: Int64 = 0
            if !started {
                started = true
                now += prompt
            }
            let before = min(output, expected) / Self.step
            output += Int64(pieces)
            let after = min(output, expected) / Self.step
            now += (after - before) * Self.step
            taken += now
            return now
        }
    }

    private func finished(_ index: Int, tokens: Int64, success: Bool, model: String, output: Int?) {
        let now = clock()
        balancer.withLock { $0.finished(index, tokens: max(tokens, 0), success: success, now: now) }
        if let output { estimates.withLock { $0[model, default: OutputLengthEstimate()].observe(outputTokens: output) } }
    }
}
