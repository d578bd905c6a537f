public import Caching
public import SwitchyardCore
public import SwitchyardModels

/// After routing: answers a request from an earlier identical one (same tenant, model, prompts, parameters and tools).
///
/// A hit is replayed in the caller's format, as a stream when one was asked for, with the original usage and cost 0.
/// Only complete, successful answers are stored: a non-streamed answer when it arrives, a stream only when it ended
/// cleanly (never one that was cut, failed or abandoned), and never an error.
public struct ExactCacheStage: GatewayStage {
    let store: any ExactCacheStore
    let settings: CacheSettings
    let recorder: any CacheRecorder

    public init(store: any ExactCacheStore, settings: CacheSettings, recorder: any CacheRecorder) {
        self.store = store
        self.settings = settings
        self.recorder = recorder
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: Next) async throws -> GatewayResponse {
        let directives = context.cacheDirectives
        let configuredTTL = settings.ttl(for: request.model)
        guard settings.exactEnabled, configuredTTL > .zero, !directives.skipStore else {
            recorder.cache(.bypass, model: request.model, saved: .zero, caller: context.caller)
            return mark(try await next(request, context), .bypass)
        }
        let caller = try context.requireCaller()
        let key = ExactCacheKey.make(request, tenant: caller.tenant, promptVersion: directives.promptVersion)
        let now = ContinuousClock.now
        if !directives.skipLookup, let answer = store.get(key, now: now), answer.tenant == caller.tenant {
            recorder.cache(.hitExact, model: request.model, saved: answer.cost, caller: caller)
            if request.stream {
                var stream = ChatStream(format: request.sourceFormat, events: AnswerReplay.events(answer.response))
                stream.cacheStatus = .hitExact
                return .stream(stream)
            }
            var completion = Completion(response: answer.response, raw: answer.raw, cost: .zero)
            completion.cacheStatus = .hitExact
            return .completion(completion)
        }
        recorder.cache(.miss, model: request.model, saved: .zero, caller: caller)
        let ttl = min(directives.ttl ?? configuredTTL, configuredTTL)
        let store = self.store
        let tenant = caller.tenant
        let model = request.model
        switch try await next(request, context) {
        case .completion(var completion):
            if ttl > .zero, let response = try? completion.canonicalResponse() {
                let stored = ContinuousClock.now
                store.put(key, CachedAnswer(tenant: tenant, model: model, response: response, raw: completion.raw,
                                            cost: completion.cost ?? .zero, storedAt: stored, expiresAt: stored + ttl))
            }
            completion.cacheStatus = .miss
            return .completion(completion)
        case .stream(var stream):
            stream.cacheStatus = .miss
            guard ttl > .zero else { return .stream(stream) }
            let assembler = Locked(AnswerAssembler())
            stream.lifecycle.onChunks { chunks in assembler.withLock { $0.add(chunks) } }
            let price = context.route?.price
            stream.lifecycle.onTermination { outcome, _ in
                guard case .completed = outcome, let response = assembler.withLock({ $0.response() }) else { return }
                let stored = ContinuousClock.now
                store.put(key, CachedAnswer(tenant: tenant, model: model, response: response, raw: nil,
                                            cost: price?.cost(of: response.usage) ?? .zero, storedAt: stored,
                                            expiresAt: stored + ttl))
            }
            return .stream(stream)
        }
    }

    func mark(_ response: GatewayResponse, _ status: CacheStatus) -> GatewayResponse {
        switch response {
        case .completion(var completion):
            completion.cacheStatus = status
            return .completion(completion)
        case .stream(var stream):
            stream.cacheStatus = status
            return .stream(stream)
        }
    }
}
