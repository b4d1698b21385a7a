// vilab's thin C interface to one compiled Stan program (stan::model::model_base).
//
// Compiled in ONE translation unit after the stanc-generated model code (which defines
// `stan::model::new_model`), see vilab/targets/stan_build.py. Loaded with ctypes.
//
// Every entry point catches std::exception and returns its message through `err`
// (malloc'ed, freed by vs_free_str); a return value of 0 means success. A
// std::domain_error inside log_prob (Stan's "reject", a scale <= 0 at an extreme point)
// is not an error: that point gets log density -inf and gradient 0; so does a point
// whose log density comes back NaN or -inf.
//
// Density: log p(z) of the unconstrained parameters, dropping constants (propto=true)
// and adding the log-Jacobian of the constraining transform (jacobian=true), i.e.
// stan::model::log_prob_grad<true, true> (Stan Reference Manual, "Constraint
// transforms"; Carpenter et al. 2017, "The Stan Math Library").
#include <stan/io/json/json_data.hpp>
#include <stan/io/empty_var_context.hpp>
#include <stan/model/log_prob_grad.hpp>
#include <stan/model/model_base.hpp>
#include <stan/services/util/create_rng.hpp>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace {

char* copy_str(const std::string& s) {
  char* out = static_cast<char*>(std::malloc(s.size() + 1));
  std::memcpy(out, s.c_str(), s.size() + 1);
  return out;
}

struct Shim {
  stan::model::model_base* model;
  std::vector<std::string> names;  // parameters + transformed parameters
  int n_params;                     // constrained parameters alone (no transformed)
};

// One thread's share: points [lo, hi). Returns "" or the first error message.
std::string density_range(const Shim* s, int lo, int hi, int dim, const double* in,
                          double* lp, double* grad) {
#ifdef STAN_THREADS
  static thread_local stan::math::ChainableStack thread_instance;
#endif
  std::vector<int> params_i;
  std::vector<double> params(dim), g(dim);
  std::ostringstream msgs;
  for (int i = lo; i < hi; ++i) {
    std::copy(in + i * dim, in + (i + 1) * dim, params.begin());
    try {
      lp[i] = stan::model::log_prob_grad<true, true>(*s->model, params, params_i, g, &msgs);
      if (std::isnan(lp[i]) || lp[i] == -std::numeric_limits<double>::infinity()) {
        lp[i] = -std::numeric_limits<double>::infinity();  // zero density: no gradient
        std::fill(g.begin(), g.end(), 0.0);
      }
      std::copy(g.begin(), g.end(), grad + i * dim);
    } catch (const std::domain_error&) {
      stan::math::recover_memory();
      lp[i] = -std::numeric_limits<double>::infinity();
      std::fill(grad + i * dim, grad + (i + 1) * dim, 0.0);
    } catch (const std::exception& e) {
      stan::math::recover_memory();
      return std::string(e.what());
    }
  }
  return "";
}

}  // namespace

extern "C" {

void vs_free_str(char* s) { std::free(s); }

// Build the model from a JSON data string; NULL and *err on failure.
void* vs_new(const char* data_json, unsigned int seed, char** err) {
  try {
    std::string data(data_json == nullptr ? "" : data_json);
    std::ostringstream msgs;
    stan::model::model_base* model;
    if (data.empty()) {
      stan::io::empty_var_context ctx;
      model = &::new_model(ctx, seed, &msgs);
    } else {
      std::istringstream in(data);
      stan::json::json_data ctx(in);
      model = &::new_model(ctx, seed, &msgs);
    }
    Shim* s = new Shim{model, {}, 0};
    model->constrained_param_names(s->names, true, false);
    std::vector<std::string> params_only;
    model->constrained_param_names(params_only, false, false);
    s->n_params = static_cast<int>(params_only.size());
    return s;
  } catch (const std::exception& e) {
    *err = copy_str(e.what());
    return nullptr;
  }
}

void vs_delete(void* h) {
  Shim* s = static_cast<Shim*>(h);
  delete s->model;
  delete s;
}

int vs_num_unconstrained(void* h) {
  return static_cast<int>(static_cast<Shim*>(h)->model->num_params_r());
}

int vs_num_constrained(void* h) { return static_cast<int>(static_cast<Shim*>(h)->names.size()); }

int vs_num_params(void* h) { return static_cast<Shim*>(h)->n_params; }

// Names separated by '\n' (Stan style, e.g. "theta.1"), malloc'ed.
char* vs_param_names(void* h) {
  std::string out;
  for (const auto& n : static_cast<Shim*>(h)->names) out += n + "\n";
  return copy_str(out);
}

// in (n, dim) -> lp (n), grad (n, dim); split over up to n_threads std::threads (the
// calling one included), each with its own autodiff stack (thread_local under STAN_THREADS).
int vs_log_density_gradient(void* h, int n, const double* in, double* lp, double* grad,
                            int n_threads, char** err) {
  try {
    Shim* s = static_cast<Shim*>(h);
    int dim = static_cast<int>(s->model->num_params_r());
    // a thread costs ~20 us to start: at least kMinPerThread points each
    constexpr int kMinPerThread = 64;
    n_threads = std::max(1, std::min(n_threads, n / kMinPerThread));
    std::vector<std::string> errors(n_threads);
    std::vector<std::thread> pool;
    int chunk = (n + n_threads - 1) / n_threads;
    for (int t = 1; t < n_threads; ++t) {
      int lo = t * chunk, hi = std::min(n, (t + 1) * chunk);
      pool.emplace_back([&, t, lo, hi] {
        if (lo < hi) errors[t] = density_range(s, lo, hi, dim, in, lp, grad);
      });
    }
    errors[0] = density_range(s, 0, std::min(n, chunk), dim, in, lp, grad);
    for (auto& th : pool) th.join();
    for (const auto& e : errors)
      if (!e.empty()) {
        *err = copy_str(e);
        return 1;
      }
    return 0;
  } catch (const std::exception& e) {
    *err = copy_str(e.what());
    return 1;
  }
}

// in (n, dim) unconstrained -> out (n, n_constrained): parameters + transformed parameters.
int vs_param_constrain(void* h, int n, const double* in, double* out, char** err) {
  try {
    Shim* s = static_cast<Shim*>(h);
    int dim = static_cast<int>(s->model->num_params_r());
    int p = static_cast<int>(s->names.size());
    stan::rng_t rng = stan::services::util::create_rng(0, 0);
    Eigen::VectorXd z(dim), x(p);
    for (int i = 0; i < n; ++i) {
      z = Eigen::Map<const Eigen::VectorXd>(in + i * dim, dim);
      s->model->write_array(rng, z, x, true, false, nullptr);
      std::copy(x.data(), x.data() + p, out + i * p);
    }
    return 0;
  } catch (const std::exception& e) {
    *err = copy_str(e.what());
    return 1;
  }
}

// in (n, n_params) constrained parameters (no transformed parameters) -> out (n, dim).
int vs_param_unconstrain(void* h, int n, const double* in, double* out, char** err) {
  try {
    Shim* s = static_cast<Shim*>(h);
    int dim = static_cast<int>(s->model->num_params_r());
    int width = s->n_params;
    Eigen::VectorXd x(width), z(dim);
    for (int i = 0; i < n; ++i) {
      x = Eigen::Map<const Eigen::VectorXd>(in + i * width, width);
      s->model->unconstrain_array(x, z, nullptr);
      std::copy(z.data(), z.data() + dim, out + i * dim);
    }
    return 0;
  } catch (const std::exception& e) {
    *err = copy_str(e.what());
    return 1;
  }
}

}  // extern "C"
