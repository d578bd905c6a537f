import Foundation
import HTTPEdge
import HTTPTypes
import Limits
import NIOCore
import NIOHTTP1
import Stages
import SwitchyardCore
import SwitchyardModels

/// `GET /v1/limits[?model=NAME]`: the caller's limits and what is left of each now. With the admin key, anyone's:
/// `?tenant=&user=&tier=&feature=` name the caller to show. A limit kept per model is shown for `model` only.
struct LimitsHandler: Sendable {
    let planner: LimitPlanner
    let store: any LimitStore
    let auth: AuthStage
    let adminKeyHash: String?

    func report(_ request: EdgeRequest) async -> EdgeResponse {
        let requestID = ChatHandler.makeRequestID()
        let credential = ChatHandler.credential(request)
        let uri = request.head.uri
        let caller: Caller
        if let adminKeyHash, let credential, KeyHash.sha256Hex(credential) == adminKeyHash {
            guard let tenant = CacheAdminHandler.query(uri, "tenant"), !tenant.isEmpty else {
                return ErrorRenderer.response(for: GatewayError(.invalidRequest, "tenant: is required with the admin key", param: "tenant"),
                                              format: .openAI, requestID: requestID)
            }
            caller = Caller(tenant: tenant, user: CacheAdminHandler.query(uri, "user") ?? tenant,
                            tier: CacheAdminHandler.query(uri, "tier") ?? "default",
                            feature: CacheAdminHandler.query(uri, "feature") ?? "default", keyID: CacheAdminHandler.query(uri, "key") ?? "")
        } else {
            do {
                caller = try auth.authenticate(credential)
            } catch {
                return ErrorRenderer.response(for: error, format: .openAI, requestID: requestID)
            }
        }
        let model = CacheAdminHandler.query(uri, "model")
        let plan = planner.plan(caller: caller, model: model ?? "", estimate: .init(inputTokens: 0, outputTokens: 0, spend: .zero))
            .filter { model != nil || (!$0.definition.scope.contains(.model) && $0.definition.when[.model] == nil) }
        let remaining: [Int64]
        do {
            remaining = try await store.remaining(plan.map(\.demand), now: wallClockNanoseconds())
        } catch {
            return ErrorRenderer.response(for: GatewayError(.overloaded, "the rate limits' store is unavailable", retryAfter: .seconds(1)),
                                          format: .openAI, requestID: requestID)
        }
        let limits: [JSONValue] = zip(plan, remaining).map { entry, left in
            let definition = entry.definition
            var scope: [(String, JSONValue)] = []
            for dimension in definition.scope {
                let value = LimitPlanner.value(of: dimension, caller: caller, model: model ?? "")
                scope.append((dimension.rawValue, .string(value)))
            }
            return .object([
                "name": .string(definition.name), "measure": .string(definition.measure.rawValue),
                "limit": .int(definition.amount), "window": definition.window.map { .string($0.rawValue) } ?? .null,
                "scope": .object(Dictionary(uniqueKeysWithValues: scope)), "remaining": .int(left),
                "counts": .string(definition.countsAllRequests ? "all_requests" : "model_requests"),
            ])
        }
        let body: JSONValue = ["object": "limits", "limits": .array(limits)]
        return EdgeResponse(status: .ok, headers: [.contentType: "application/json", .requestID: requestID],
                            body: .buffer(ByteBuffer(bytes: body.serialized())))
    }
}
