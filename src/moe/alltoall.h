// The all-to-all exchange as an autograd function: forward sends rows by send_splits and
// receives by recv_splits; backward is the reverse exchange of the gradients (recv and send
// splits swapped). Works with any Communicator backend.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "parallel/communicator.h"

namespace sy {

// x: [N, ...] with N = sum(send_splits) -> [sum(recv_splits), ...]. Empty splits: equal.
// The caller's CollectiveLabel (watchdog.h) names the exchange, and "<label> (backward)" the
// reverse exchange of the gradients, wherever autograd runs it.
at::Tensor all_to_all(const at::Tensor& x, Communicator& comm,
                      const std::vector<int64_t>& send_splits,
                      const std::vector<int64_t>& recv_splits);

}  // namespace sy
