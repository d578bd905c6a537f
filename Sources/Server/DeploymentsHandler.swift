import Admission
import HTTPEdge
import HTTPTypes
import Limits
import NIOCore
import Stages
import SwitchyardCore
import SwitchyardModels

/// `GET /v1/deployments` (admin key): every deployment the configuration names — a provider and its model there —
/// with the models it serves, its circuit breaker's state (null without a breaker) and what is left of each of its
/// budgets now (shared by every instance when the state is in Redis).
struct DeploymentsHandler: Sendable {
    let config: GatewayConfig
    let attempts: AttemptsStage?
    let store: any LimitStore
    let adminKeyHash: String?

    func report(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        if let refusal = CacheAdminHandler.refuseUnlessAdmin(request, adminKeyHash: adminKeyHash, endpoint: "GET /v1/deployments",
                                                             requestID: requestID) {
            return refusal
        }
        var models: [String: Set<String>] = [:]
        for route in Array(config.models.values) + config.deployments.values.joined() {
            models[route.deploymentID, default: []].insert(route.name)
        }
        let circuits = attempts?.breakerStates() ?? [:]
        var entries: [JSONValue] = []
        for id in models.keys.sorted() {
            var budget: [(String, JSONValue)] = []
            if let limits = config.budgets[id], let attempts {
                let demands = attempts.demands(limits, id: id, inputTokens: 0, outputTokens: 0)
                guard let remaining = try? await store.remaining(demands, now: wallClockNanoseconds()) else {
                    return ErrorRenderer.response(for: GatewayError(.overloaded, "the budgets' store is unavailable", retryAfter: .seconds(1)),
                                                  format: .openAI, requestID: requestID)
                }
                for (demand, left) in zip(demands, remaining) {
                    let name = demand.counter.split(separator: "|").last.map(String.init) ?? ""
                    budget.append((name, ["limit": .int(demand.rule.capacity), "remaining": .int(left)]))
                }
            }
            entries.append(.object([
                "id": .string(id), "models": .array((models[id] ?? []).sorted().map { .string($0) }),
                "circuit": circuits[id].map { .string($0.name) } ?? .null,
                "budget": budget.isEmpty ? .null : .object(Dictionary(uniqueKeysWithValues: budget)),
            ]))
        }
        let body: JSONValue = ["object": "deployments", "deployments": .array(entries)]
        return EdgeResponse(status: .ok, headers: [.contentType: "application/json", .requestID: requestID],
                            body: .buffer(ByteBuffer(bytes: body.serialized())))
    }
}
