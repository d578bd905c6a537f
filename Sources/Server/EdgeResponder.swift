import HTTPTypes
import Hummingbird
import SwitchyardCore
import SwitchyardModels

/// Wraps the router: every response carries `x-request-id`, and requests no route serves (unknown path, wrong
/// method) get a JSON error in the envelope of the API their path belongs to, never an empty body.
struct EdgeResponder<Inner: HTTPResponder>: HTTPResponder {
    typealias Context = Inner.Context
    let inner: Inner

    func respond(to request: Request, context: Context) async throws -> Response {
        var response = try await inner.respond(to: request, context: context)
        // The router answers unmatched requests itself, with an empty body and no content type.
        if response.headers[.contentType] == nil, response.status.code >= 400 {
            let format: APIFormat = request.uri.path.hasPrefix("/v1/messages") ? .anthropic : .openAI
            let error = GatewayError(response.status == .notFound ? .notFound : .invalidRequest,
                                     "no endpoint \(request.method.rawValue) \(request.uri.path)")
            let status = response.status
            response = ErrorRenderer.response(for: error, format: format, requestID: ChatHandler.makeRequestID())
            response.status = status
        }
        if response.headers[.requestID] == nil { response.headers[.requestID] = ChatHandler.makeRequestID() }
        return response
    }
}
