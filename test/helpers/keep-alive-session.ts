import type { ClientDuplexStream, ServiceError } from "@grpc/grpc-js";
import type {
  KeepAliveRequest,
  KeepAliveResponse,
  RegistryServiceClient,
} from "../../proto/gen/leasehold/registry/v1/registry.js";

/** A KeepAlive stream driven one request at a time: `renew()` resolves with the reply or rejects with the status. */
export class KeepAliveSession {
  readonly #stream: ClientDuplexStream<KeepAliveRequest, KeepAliveResponse>;
  readonly #waiting: { resolve(response: KeepAliveResponse): void; reject(error: ServiceError): void }[] = [];
  #ended: ServiceError | undefined;

  constructor(client: RegistryServiceClient) {
    this.#stream = client.keepAlive();
    this.#stream.on("data", (response: KeepAliveResponse) => this.#waiting.shift()?.resolve(response));
    this.#stream.on("error", (error: ServiceError) => {
      this.#ended = error;
      for (const waiter of this.#waiting.splice(0)) waiter.reject(error);
    });
  }

  /** Renews `lease` (its id and the token Register returned, e.g. a RegisterResponse). */
  renew(lease: KeepAliveRequest): Promise<KeepAliveResponse> {
    if (this.#ended !== undefined) return Promise.reject(this.#ended);
    return new Promise((resolve, reject) => {
      this.#waiting.push({ resolve, reject });
      this.#stream.write({ leaseId: lease.leaseId, registrationToken: lease.registrationToken });
    });
  }

  /** Half-closes (the server answers what is pending, then ends OK). */
  end(): void {
    this.#stream.end();
  }

  cancel(): void {
    this.#stream.cancel();
  }
}
