import Caching
import SwitchyardCore
import SwitchyardModels

/// What the exact and semantic cache stages share: replaying a stored answer, and storing an answer once it is
/// known to be complete and successful.
enum CacheSupport {
    /// A stored answer as the caller asked for it: a stream replayed with the real event sequence, or a whole answer;
    /// `nil` if a stored body no longer decodes (then the request goes on as a miss).
    static func replay(_ answer: CachedAnswer, for request: ChatRequest, outcome: CacheOutcome) -> GatewayResponse? {
        if request.stream {
            guard let response = answer.response else { return nil }
            var stream = ChatStream(format: request.sourceFormat, events: AnswerReplay.events(response))
            stream.cache = outcome
            return .stream(stream)
        }
        var completion = answer.completion
        completion.cost = .zero
        completion.cache = outcome
        // A hit made no routing decision now.
        completion.routing = nil
        return .completion(completion)
    }

    /// Passes `response` on, storing it through `store` when it is complete: a whole answer at once, a stream only
    /// when it ends cleanly (never one that was cut, failed or abandoned). Errors never reach here (they are thrown).
    /// `retention`: how long past its TTL the store keeps the answer (for a degradation policy's stale answers).
    static func storing(_ response: GatewayResponse, ttl: Duration, retention: Duration = .zero, tenant: String, model: String,
                        price: ModelPrice?, outcome: CacheOutcome?, store: @escaping @Sendable (CachedAnswer) -> Void)
        -> GatewayResponse
    {
        // An answer a later cache served is not stored again: removing a bad semantic entry must remove it for good.
        // Nor is a degraded one: a cheaper model's answer must not become the cached answer for the model asked.
        let served: Bool = switch response {
        case .completion(let completion):
            completion.cache.map { $0.status == .hitExact || $0.status == .hitSemantic } ?? false || completion.limits?.degraded != nil
        case .stream(let stream):
            stream.cache.map { $0.status == .hitExact || $0.status == .hitSemantic } ?? false || stream.limits?.degraded != nil
        }
        let ttl = served ? .zero : ttl
        switch response {
        case .completion(var completion):
            // Stored as it came (bytes and usage): decoded only if a hit ever needs another format or a stream.
            if ttl > .zero, completion.response != nil || completion.raw != nil {
                let now = ContinuousClock.now
                store(CachedAnswer(tenant: tenant, model: model, completion: completion, cost: completion.cost ?? .zero,
                                   storedAt: now, expiresAt: now + ttl, retainedUntil: now + ttl + retention))
            }
            if let outcome { completion.cache = outcome }
            return .completion(completion)
        case .stream(var stream):
            if let outcome { stream.cache = outcome }
            guard ttl > .zero else { return .stream(stream) }
            let routedPrice = stream.routing?.model.price
            let assembler = Locked(AnswerAssembler())
            stream.lifecycle.onChunks { chunks in assembler.withLock { $0.add(chunks) } }
            stream.lifecycle.onTermination { outcome, _ in
                guard case .completed = outcome, let response = assembler.withLock({ $0.response() }) else { return }
                let now = ContinuousClock.now
                // A routed answer is priced at the model that served it.
                let price = routedPrice ?? price
                store(CachedAnswer(tenant: tenant, model: model, response: response, raw: nil,
                                   cost: price?.cost(of: response.usage) ?? .zero, storedAt: now, expiresAt: now + ttl,
                                   retainedUntil: now + ttl + retention))
            }
            return .stream(stream)
        }
    }

    static func mark(_ response: GatewayResponse, _ outcome: CacheOutcome) -> GatewayResponse {
        switch response {
        case .completion(var completion):
            if completion.cache == nil { completion.cache = outcome }
            return .completion(completion)
        case .stream(var stream):
            if stream.cache == nil { stream.cache = outcome }
            return .stream(stream)
        }
    }
}
