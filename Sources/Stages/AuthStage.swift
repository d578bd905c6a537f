public import SwitchyardCore
public import SwitchyardModels

/// Stage 1: the presented API key → the caller (tenant, user, tier, feature).
///
/// With no keys configured (the embedded default) every key is accepted and each distinct key is its own tenant
/// and user, named after its hash; a request without a key is the tenant `anonymous`.
public struct AuthStage: GatewayStage {
    let keys: [String: Caller]
    /// Credentials already accepted, so that a client's every request does not pay for a SHA-256 (about 2% of the
    /// proxy path's CPU). Bounded: emptied when it reaches `remembered` entries. Refused credentials are never
    /// kept. The dictionary's hash is seeded per process; the credentials are never logged.
    let accepted = Locked([String: Caller]())
    static let remembered = 4096

    public init(keys: [APIKeyEntry]) {
        self.keys = Dictionary(keys.map { ($0.sha256, $0.caller) }, uniquingKeysWith: { first, _ in first })
    }

    public func handle(_ request: ChatRequest, context: GatewayContext, next: @escaping Next) async throws -> GatewayResponse {
        try await next(request, authenticated(context))
    }

    @inline(never)
    func authenticated(_ context: GatewayContext) throws(GatewayError) -> GatewayContext {
        // A job's worker runs the request as the caller who submitted it (no key is kept with a job).
        if context.runsAsJob, context.caller != nil { return context }
        var context = context
        var caller = try authenticate(context.credential)
        if let feature = context.requestedFeature, caller.featureFromHeader { caller.feature = feature }
        context.caller = caller
        return context
    }

    /// The caller a credential stands for.
    /// - Throws: `GatewayError.unauthenticated` when keys are configured and the credential is missing or unknown.
    public func authenticate(_ credential: String?) throws(GatewayError) -> Caller {
        guard let credential, !credential.isEmpty else {
            if keys.isEmpty { return Caller(tenant: "anonymous", user: "anonymous", keyID: "none", featureFromHeader: true) }
            throw GatewayError(.unauthenticated, "missing API key: send it as 'Authorization: Bearer KEY' or 'x-api-key: KEY'")
        }
        if let caller = accepted.withLock({ $0[credential] }) { return caller }
        let hash = KeyHash.sha256Hex(credential)
        let caller: Caller
        if keys.isEmpty {
            let id = String(hash.prefix(12))
            caller = Caller(tenant: "key-\(id)", user: "key-\(id)", keyID: id, featureFromHeader: true)
        } else {
            guard let known = keys[hash] else { throw GatewayError(.unauthenticated, "invalid API key") }
            caller = known
        }
        accepted.withLock { accepted in
            if accepted.count >= Self.remembered { accepted.removeAll(keepingCapacity: true) }
            accepted[credential] = caller
        }
        return caller
    }
}
