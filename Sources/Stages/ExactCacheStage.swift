public import Caching
public import SwitchyardCore
public import SwitchyardModels

/// After routing: answers a request from an earlier identical one (same tenant, model, prompts, parameters, tools).
///
/// A hit is replayed in the caller's format, as a stream when one was asked for, with the original usage and cost 0.
/// Only complete, successful answers are stored (see `CacheSupport.storing`).
public struct ExactCacheStage: GatewayStage {
    let store: any ExactCacheStore
    let settings: CacheSettings
    let recorder: any CacheRecorder
    /// Whether a failing store refuses the request (`state.caches: fail_closed`) instead of being bypassed.
    let failClosed: Bool
    /// How long answers are kept past their TTL, for a degradation policy to serve when the limits refuse a request
    /// (the longest `stale_for`); zero: not kept.
    let staleRetention: Duration

    public init(store: any ExactCacheStore, settings: CacheSettings, recorder: any CacheRecorder, failClosed: Bool = false,
                staleRetention: Duration = .zero) {
        self.store = store
        self.settings = settings
        self.recorder = recorder
        self.failClosed = failClosed
        self.staleRetention = max(staleRetention, .zero)
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        // The async part holds only what crosses the `await`: the work before and after is in synchronous functions,
        // whose locals live on the thread's stack instead of in the task's frame.
        // A key over a multi-megabyte request (SHA-256 of its canonical form) is computed off the event loop.
        let bytes = context.original?.byteCount ?? 0
        let key = bytes >= Offload.thresholdBytes ? try await Offload.ifLarge(bytes) { [self] () throws(GatewayError) in
            try self.key(request, context: context)
        } : try self.key(request, context: context)
        // The store's answer, read before the synchronous part; a shared store that fails is bypassed (fail open)
        // or refuses the request (fail closed).
        var stored: CachedAnswer?
        let now = ContinuousClock.now
        if let key, !context.cacheDirectives.skipLookup {
            let tenant = try context.requireCaller().tenant
            do {
                stored = try await store.lookup(key, tenant: tenant, now: now)
            } catch {
                recorder.stateFailed(seam: "exact_cache")
                if failClosed { throw GatewayError(.overloaded, "the exact cache's store is unavailable") }
            }
        }
        switch try lookup(request, context: context, key: key, stored: stored, now: now) {
        case .bypass:
            return CacheSupport.mark(try await next(request, context), CacheOutcome(.bypass))
        case .hit(let replay):
            return replay
        case .miss(let key, let tenant, let stale):
            var context = context
            if let stale { context.fallbacks.stale = stale }
            return store(try await next(request, context), key: key, tenant: tenant, request: request, context: context)
        }
    }

    enum Lookup {
        case bypass
        case hit(GatewayResponse)
        /// Not cached: store the caller's answer under this key. `stale`: an answer past its TTL still kept.
        case miss(key: String, tenant: String, stale: CacheFallbacks.Stale?)
    }

    /// The request's key; `nil` when the exact cache does not apply to it.
    func key(_ request: ChatRequest, context: GatewayContext) throws(GatewayError) -> String? {
        let directives = context.cacheDirectives
        let configuredTTL = settings.ttl(for: request.model)
        guard settings.exactEnabled, !settings.exactOff.contains(request.model), configuredTTL > .zero, !directives.skipStore else {
            return nil
        }
        return ExactCacheKey.make(request, tenant: try context.requireCaller().tenant, promptVersion: directives.promptVersion)
    }

    @inline(never)
    func lookup(_ request: ChatRequest, context: GatewayContext, key: String?, stored: CachedAnswer?,
                now: ContinuousClock.Instant) throws(GatewayError) -> Lookup {
        let directives = context.cacheDirectives
        guard let key else {
            recorder.cache(.exact, .bypass, model: request.model, saved: .zero, caller: context.caller)
            return .bypass
        }
        let caller = try context.requireCaller()
        let answer = directives.skipLookup ? nil : stored.flatMap { $0.tenant == caller.tenant ? $0 : nil }
        if let answer, answer.expiresAt > now, let replay = CacheSupport.replay(answer, for: request, outcome: CacheOutcome(.hitExact)) {
            recorder.cache(.exact, .hit, model: request.model, saved: answer.cost, caller: caller)
            context.trail?.served(from: .exact, saved: answer.cost)
            return .hit(replay)
        }
        recorder.cache(.exact, .miss, model: request.model, saved: .zero, caller: caller)
        // Past its TTL: a miss, offered to the limits' degradation policy (replayed only if a step serves it).
        let stale = answer.map { answer in
            CacheFallbacks.Stale(expiredAt: answer.expiresAt) { CacheSupport.replay(answer, for: request, outcome: CacheOutcome(.hitExact)) }
        }
        return .miss(key: key, tenant: caller.tenant, stale: stale)
    }

    @inline(never)
    func store(_ response: GatewayResponse, key: String, tenant: String, request: ChatRequest, context: GatewayContext)
        -> GatewayResponse
    {
        let configuredTTL = settings.ttl(for: request.model)
        let store = self.store
        return CacheSupport.storing(response, ttl: min(context.cacheDirectives.ttl ?? configuredTTL, configuredTTL),
                                    retention: staleRetention, tenant: tenant, model: request.model, price: context.route?.price,
                                    outcome: nil) { store.put(key, $0) }.marked(CacheOutcome(.miss))
    }
}

extension GatewayResponse {
    /// This response with `outcome`, unless a later stage (the semantic cache) already set one.
    func marked(_ outcome: CacheOutcome) -> GatewayResponse {
        CacheSupport.mark(self, outcome)
    }
}
