// The default population PK model (models/pk_2cmt_metab.yaml) in Stan, for a speed comparison
// with the PyMC model of ketamine_pmx.inference sampled by nutpie. Same priors, same
// (non-centred) parameterisation, same exact closed-form solution, same log density (all
// normalising constants kept: every term is a full _lpdf/_lcdf added to target).
//
// Per enantiomer chain c (1 = S, 2 = R) and subject i:
//   log theta_pop[c] ~ Normal(log typical[c], prior_sd)   cl_f cl_o vc q vp cl_nk cl_hnk
//   logit fm_hnk_pop[c] ~ Normal(logit typical[c], prior_sd)
//   omega_g[c] ~ HalfNormal(omega_prior_sd), z_g[i, c] ~ Normal(0, 1), eta = omega * z
//       (groups cl (cl_f and cl_o), vc, q, vp, cl_nk, cl_hnk)
//   e_cyp2b6[IM], e_cyp2b6[PM] ~ Normal(0, cyp_prior_sd) on log cl_f (NM: 0)
//   theta[i, c] = exp(log theta_pop[c] + a log(WT_i / ref) + cyp + eta), a = a_cl for clearances
//       (q included), a_v for volumes; v_nk, v_hnk fixed at typical (allometrically scaled).
// Structure: two-compartment parent (cl = cl_f + cl_o, vc, q, vp) -> NK (formed by cl_f, mass
// ratio r_nk, eliminated by cl_nk from v_nk) -> HNK (formed by fm_hnk * cl_nk, mass ratio r_hnk,
// eliminated by cl_hnk from v_hnk). Residual: log DV ~ Normal(log C, sigma_prop[analyte]); BLQ
// rows contribute normal_lcdf(log LLOQ | log C, sigma) (Beal M3). Stan's normal_lcdf has
// approximate derivatives (relative error up to ~1e-5 per censored row; its value is exact).
//
// Closed form (see the docstring of src/ketamine_pmx/pk.py): the parent's unit-impulse response
// is w1 exp(-lam1 t) + w2 exp(-lam2 t); the amount at chain level L after a unit bolus is
// C_L sum_m w_m E(t; lam_m, k_1..k_L), E(t; x..) the convolution of exponentials. An infusion
// adds the node 0 while it runs; after it ends (duration T, time since end tau) the amount is
// sum_(r=0..L) E(T; 0, x_0..x_r) E(tau; x_r..x_L) (divided-difference Leibniz rule: positive
// terms, no cancellation), with the end-of-infusion states E(T; 0, ..) computed once per dose.
//
// The work is in functions (individual parameters, per-subject tables, predictions), the model
// block only adds densities: this keeps stanc's pedantic analysis, which httpstan runs under a
// 1-second timeout, fast.
functions {
  // E(t; x_1..x_n) = (exp(-x_1 t) * ... * exp(-x_n t))(t), the convolution of exponentials
  // ((-1)^(n-1) times the divided difference of exp(-x t) over the nodes); 0 for t <= 0.
  // Column j of the divided-difference table holds E over the runs y_i..y_j of the sorted
  // nodes. A run whose scaled spread s = t (y_j - y_i) is below 1/2 uses the series
  //   E = exp(-y_j t) t^m sum_p h_p(u) / (p + m)!,  u_l = (y_j - y_l) t,  m = j - i
  // (h_p complete homogeneous symmetric polynomials, built incrementally as the run grows
  // leftwards; all terms positive). Its orders are chosen per column from the largest such
  // spread, so that the first omitted term, below s^P / P!, is under 2e-16 relative (also
  // for the derivatives). Other runs use the recursion
  //   E(y_i..y_j) = (E(y_i..y_(j-1)) - E(y_(i+1)..y_j)) / (y_j - y_i),
  // which with s >= 1/2 loses at most a few bits. inv_fact[r + 1] = 1 / r!, with at least
  // n + 15 entries. Stable in value and gradient at coincident nodes (tests/test_stan_model.py).
  real exp_conv(data real t, vector x, data vector inv_fact) {
    int n = num_elements(x);
    if (t <= 0) {
      return 0;
    }
    if (n == 1) {
      return exp(-x[1] * t);
    }
    vector[n] y = sort_asc(x);
    vector[n] col = exp(-t * y);  // col[i] = E(y_i..y_j) for i <= j, exp(-y_i t) for i > j
    for (j in 2:n) {
      int i = j - 1;
      if ((y[j] - y[i]) * t < 0.5) {
        // Series for the runs (i0..j), ..., (j-1..j), whose spreads are below 1/2.
        int i0 = i;
        int n_terms;
        real s_max;
        while (i0 > 1) {
          if ((y[j] - y[i0 - 1]) * t >= 0.5) {
            break;
          }
          i0 -= 1;
        }
        s_max = (y[j] - y[i0]) * t;
        if (s_max < 1e-4) {
          n_terms = 4;
        } else if (s_max < 1e-3) {
          n_terms = 5;
        } else if (s_max < 1e-2) {
          n_terms = 7;
        } else if (s_max < 0.1) {
          n_terms = 10;
        } else if (s_max < 0.25) {
          n_terms = 12;
        } else {
          n_terms = 15;
        }
        {
          int top = j - 1 + n_terms;  // highest order kept
          vector[top + 1] sums = inv_fact[1:(top + 1)];  // sums[r + 1] = sum_p h_p / (p + r)!
          real ey = col[j];
          while (i >= i0) {
            real u = (y[j] - y[i]) * t;
            int m = j - i;
            real above = sums[top + 1];
            for (k in 1:(top - m)) {
              above = fma(u, above, sums[top + 1 - k]);
              sums[top + 1 - k] = above;
            }
            col[i] = ey * (t ^ m * sums[m + 1]);
            i -= 1;
          }
        }
      }
      while (i >= 1) {
        col[i] = (col[i] - col[i + 1]) / (y[j] - y[i]);
        i -= 1;
      }
    }
    return col[1];
  }

  // Nodes of a chain level: [lam, k_1..k_level] followed by 0 when zero == 1.
  vector chain_nodes(real lam, real k1, real k2, int level, int zero) {
    vector[level + 1 + zero] nodes;
    nodes[1] = lam;
    if (level >= 1) {
      nodes[2] = k1;
    }
    if (level >= 2) {
      nodes[3] = k2;
    }
    if (zero == 1) {
      nodes[level + 2] = 0;
    }
    return nodes;
  }

  // Individual values exp(log_pop[c] + allo + shift + omega[c] z[:, c]), subject x chain.
  matrix individual(vector log_pop, data vector allo, vector shift, vector omega, matrix z) {
    int n = rows(z);
    matrix[n, 2] theta;
    for (c in 1:2) {
      theta[ : , c] = exp(log_pop[c] + allo + shift + omega[c] * z[ : , c]);
    }
    return theta;
  }

  // Per subject (rows) and chain (columns): [lam1, lam2, w1, w2, k_nk, k_hnk, and the factors
  // from amount (mg) to concentration (ng/mL) at levels 0, 1, 2]. Two-compartment
  // eigenvalues and weights in the cancellation-free form of pk._disposition.
  array[] matrix subject_tables(matrix cl_f, matrix cl_o, matrix vc, matrix q, matrix vp,
                                matrix cl_nk, matrix cl_hnk, vector fm_hnk, data matrix v_nk,
                                data matrix v_hnk, data real r_nk, data real r_hnk) {
    int n = rows(cl_f);
    array[9] matrix[n, 2] tab;
    matrix[n, 2] k10 = (cl_f + cl_o) ./ vc;
    matrix[n, 2] k12 = q ./ vc;
    matrix[n, 2] k21 = q ./ vp;
    matrix[n, 2] a = k10 + k12 - k21;
    matrix[n, 2] root = sqrt(square(a) + 4 * k12 .* k21);
    matrix[n, 2] abs_a = abs(a);
    matrix[n, 2] big = (root + abs_a) ./ (2 * root);
    matrix[n, 2] small = 2 * k12 .* k21 ./ (root .* (root + abs_a));
    matrix[n, 2] coef_nk = r_nk * cl_f ./ vc;  // NK formation rate constant x mass ratio
    tab[2] = 0.5 * (k10 + k12 + k21 + root);
    tab[1] = k10 .* k21 ./ tab[2];
    for (c in 1:2) {
      for (i in 1:n) {
        if (a[i, c] >= 0) {
          tab[3][i, c] = small[i, c];
          tab[4][i, c] = big[i, c];
        } else {
          tab[3][i, c] = big[i, c];
          tab[4][i, c] = small[i, c];
        }
      }
    }
    tab[5] = cl_nk ./ v_nk;
    tab[6] = cl_hnk ./ v_hnk;
    tab[7] = 1000 ./ vc;
    tab[8] = 1000 * coef_nk ./ v_nk;
    tab[9] = (1000 * r_hnk) * coef_nk .* tab[5] ./ v_hnk * diag_matrix(fm_hnk);
    return tab;
  }

  // log of the predicted concentrations (ng/mL, floored at conc_floor) of the observations.
  vector log_conc(array[] matrix tab, data array[] int obs_subject, data array[] int obs_chain,
                  data array[] int obs_level, data array[] int dir_obs, data vector dir_dt,
                  data vector dir_scale, data array[] int dir_infusing,
                  data array[] int end_subject, data array[] int end_chain,
                  data vector end_dur, data array[] int end_top, data array[] int post_obs,
                  data array[] int post_end, data vector post_tau, data vector post_rate,
                  data vector inv_fact, data real conc_floor) {
    int n_obs = size(obs_subject);
    int n_end = size(end_subject);
    vector[n_obs] amount = rep_vector(0, n_obs);
    vector[n_obs] mu;
    matrix[n_end, 2] state_parent;
    matrix[n_end, 2] state_met = rep_matrix(0, n_end, 2);
    // Boluses and running infusions.
    for (k in 1:size(dir_obs)) {
      int o = dir_obs[k];
      int i = obs_subject[o];
      int c = obs_chain[o];
      int lev = obs_level[o];
      real s = tab[3][i, c]
               * exp_conv(dir_dt[k],
                          chain_nodes(tab[1][i, c], tab[5][i, c], tab[6][i, c], lev,
                                      dir_infusing[k]),
                          inv_fact)
               + tab[4][i, c]
                 * exp_conv(dir_dt[k],
                            chain_nodes(tab[2][i, c], tab[5][i, c], tab[6][i, c], lev,
                                        dir_infusing[k]),
                            inv_fact);
      amount[o] += dir_scale[k] * s;
    }
    // End-of-infusion states per unit rate: parent per mode, w_m E(T; 0, lam_m); metabolite r,
    // sum_m w_m E(T; 0, lam_m, k_1..k_r).
    for (d in 1:n_end) {
      int i = end_subject[d];
      int c = end_chain[d];
      state_parent[d, 1] = tab[3][i, c] * exp_conv(end_dur[d], [0, tab[1][i, c]]', inv_fact);
      state_parent[d, 2] = tab[4][i, c] * exp_conv(end_dur[d], [0, tab[2][i, c]]', inv_fact);
      for (r in 1:end_top[d]) {
        state_met[d, r] = tab[3][i, c]
                          * exp_conv(end_dur[d],
                                     chain_nodes(tab[1][i, c], tab[5][i, c], tab[6][i, c], r, 1),
                                     inv_fact)
                          + tab[4][i, c]
                            * exp_conv(end_dur[d],
                                       chain_nodes(tab[2][i, c], tab[5][i, c], tab[6][i, c], r,
                                                   1),
                                       inv_fact);
      }
    }
    // Ended infusions: the states propagated to the observation.
    for (k in 1:size(post_obs)) {
      int o = post_obs[k];
      int d = post_end[k];
      int i = obs_subject[o];
      int c = obs_chain[o];
      int lev = obs_level[o];
      real s = state_parent[d, 1]
               * exp_conv(post_tau[k],
                          chain_nodes(tab[1][i, c], tab[5][i, c], tab[6][i, c], lev, 0),
                          inv_fact)
               + state_parent[d, 2]
                 * exp_conv(post_tau[k],
                            chain_nodes(tab[2][i, c], tab[5][i, c], tab[6][i, c], lev, 0),
                            inv_fact);
      if (lev == 1) {
        s += state_met[d, 1] * exp(-tab[5][i, c] * post_tau[k]);
      } else if (lev == 2) {
        s += state_met[d, 1] * exp_conv(post_tau[k], [tab[5][i, c], tab[6][i, c]]', inv_fact)
             + state_met[d, 2] * exp(-tab[6][i, c] * post_tau[k]);
      }
      amount[o] += post_rate[k] * s;
    }
    for (o in 1:n_obs) {
      mu[o] = log(fmax(tab[7 + obs_level[o]][obs_subject[o], obs_chain[o]] * amount[o],
                       conc_floor));
    }
    return mu;
  }
}
data {
  int<lower=1> N;  // subjects
  int<lower=1> A;  // analytes (sigma_prop per analyte)
  vector[N] log_wt;  // log(WT / reference weight)
  array[N] int<lower=1, upper=3> cyp;  // CYP2B6 class: 1 NM, 2 IM, 3 PM
  real a_cl;  // allometric exponent of clearances (q included)
  real a_v;  // allometric exponent of volumes
  real<lower=0> r_nk;  // M_NK / M_KET
  real<lower=0> r_hnk;  // M_HNK / M_NK

  // Priors (vectors: chain S, R)
  vector[2] mu_log_cl_f;
  vector[2] mu_log_cl_o;
  vector[2] mu_log_vc;
  vector[2] mu_log_q;
  vector[2] mu_log_vp;
  vector[2] mu_log_cl_nk;
  vector[2] mu_log_cl_hnk;
  vector[2] mu_logit_fm_hnk;
  vector<lower=0>[8] prior_sd;  // same order: cl_f cl_o vc q vp cl_nk cl_hnk fm_hnk
  vector<lower=0>[2] v_nk_typical;  // fixed (per 70 kg)
  vector<lower=0>[2] v_hnk_typical;
  real<lower=0> omega_prior_sd;
  real<lower=0> cyp_prior_sd;
  real<lower=0> sigma_prior_sd;

  // Observations (model order)
  int<lower=1> n_obs;
  array[n_obs] int<lower=1, upper=N> obs_subject;
  array[n_obs] int<lower=1, upper=2> obs_chain;
  array[n_obs] int<lower=0, upper=2> obs_level;  // 0 ketamine, 1 NK, 2 HNK
  array[n_obs] int<lower=1, upper=A> obs_analyte;
  vector[n_obs] y;  // log DV, or log LLOQ for BLQ rows
  int<lower=0> n_unc;
  array[n_unc] int<lower=1, upper=n_obs> unc;  // quantified rows
  int<lower=0> n_cens;
  array[n_cens] int<lower=1, upper=n_obs> cens;  // BLQ rows

  // (observation, dose) terms: boluses and running infusions
  int<lower=0> n_dir;
  array[n_dir] int<lower=1, upper=n_obs> dir_obs;
  vector<lower=0>[n_dir] dir_dt;  // time since the dose (h)
  vector<lower=0>[n_dir] dir_scale;  // amount (mg, bolus) or rate (mg/h, infusion)
  array[n_dir] int<lower=0, upper=1> dir_infusing;

  // Ended infusions (one per dose and chain) and their (observation, dose) terms
  int<lower=0> n_end;
  array[n_end] int<lower=1, upper=N> end_subject;
  array[n_end] int<lower=1, upper=2> end_chain;
  vector<lower=0>[n_end] end_dur;  // duration (h)
  array[n_end] int<lower=0, upper=2> end_top;  // highest chain level observed after it
  int<lower=0> n_post;
  array[n_post] int<lower=1, upper=n_obs> post_obs;
  array[n_post] int<lower=1, upper=n_end> post_end;
  vector<lower=0>[n_post] post_tau;  // time since the end of the infusion (h)
  vector<lower=0>[n_post] post_rate;  // mg/h
}
transformed data {
  vector[32] inv_fact;
  vector[N] allo_cl = a_cl * log_wt;
  vector[N] allo_v = a_v * log_wt;
  vector[N] zero_n = rep_vector(0, N);
  matrix[N, 2] v_nk = exp(allo_v) * v_nk_typical';
  matrix[N, 2] v_hnk = exp(allo_v) * v_hnk_typical';
  inv_fact[1] = 1;
  for (r in 2:32) {
    inv_fact[r] = inv_fact[r - 1] / (r - 1);
  }
}
parameters {
  vector[2] e_cyp2b6;  // IM, PM
  vector<lower=0>[2] omega_cl;
  matrix[N, 2] z_cl;
  vector<lower=0>[2] omega_vc;
  matrix[N, 2] z_vc;
  vector<lower=0>[2] omega_q;
  matrix[N, 2] z_q;
  vector<lower=0>[2] omega_vp;
  matrix[N, 2] z_vp;
  vector<lower=0>[2] omega_cl_nk;
  matrix[N, 2] z_cl_nk;
  vector<lower=0>[2] omega_cl_hnk;
  matrix[N, 2] z_cl_hnk;
  vector[2] log_cl_f_pop;
  vector[2] log_cl_o_pop;
  vector[2] log_vc_pop;
  vector[2] log_q_pop;
  vector[2] log_vp_pop;
  vector[2] log_cl_nk_pop;
  vector[2] logit_fm_hnk_pop;
  vector[2] log_cl_hnk_pop;
  vector<lower=0>[A] sigma_prop;
}
model {
  vector[3] e_class = append_row(0, e_cyp2b6);
  vector[N] cyp_eff = e_class[cyp];
  array[9] matrix[N, 2] tab = subject_tables(
      individual(log_cl_f_pop, allo_cl, cyp_eff, omega_cl, z_cl),
      individual(log_cl_o_pop, allo_cl, zero_n, omega_cl, z_cl),
      individual(log_vc_pop, allo_v, zero_n, omega_vc, z_vc),
      individual(log_q_pop, allo_cl, zero_n, omega_q, z_q),
      individual(log_vp_pop, allo_v, zero_n, omega_vp, z_vp),
      individual(log_cl_nk_pop, allo_cl, zero_n, omega_cl_nk, z_cl_nk),
      individual(log_cl_hnk_pop, allo_cl, zero_n, omega_cl_hnk, z_cl_hnk),
      inv_logit(logit_fm_hnk_pop), v_nk, v_hnk, r_nk, r_hnk);
  vector[n_obs] mu = log_conc(tab, obs_subject, obs_chain, obs_level, dir_obs, dir_dt,
                              dir_scale, dir_infusing, end_subject, end_chain, end_dur, end_top,
                              post_obs, post_end, post_tau, post_rate, inv_fact, 1e-9);

  // Priors (HalfNormal = 2 Normal on [0, inf): log 2 per element).
  target += normal_lpdf(log_cl_f_pop | mu_log_cl_f, prior_sd[1]);
  target += normal_lpdf(log_cl_o_pop | mu_log_cl_o, prior_sd[2]);
  target += normal_lpdf(log_vc_pop | mu_log_vc, prior_sd[3]);
  target += normal_lpdf(log_q_pop | mu_log_q, prior_sd[4]);
  target += normal_lpdf(log_vp_pop | mu_log_vp, prior_sd[5]);
  target += normal_lpdf(log_cl_nk_pop | mu_log_cl_nk, prior_sd[6]);
  target += normal_lpdf(log_cl_hnk_pop | mu_log_cl_hnk, prior_sd[7]);
  target += normal_lpdf(logit_fm_hnk_pop | mu_logit_fm_hnk, prior_sd[8]);
  target += normal_lpdf(e_cyp2b6 | 0, cyp_prior_sd);
  target += normal_lpdf(omega_cl | 0, omega_prior_sd) + 2 * log2();
  target += normal_lpdf(omega_vc | 0, omega_prior_sd) + 2 * log2();
  target += normal_lpdf(omega_q | 0, omega_prior_sd) + 2 * log2();
  target += normal_lpdf(omega_vp | 0, omega_prior_sd) + 2 * log2();
  target += normal_lpdf(omega_cl_nk | 0, omega_prior_sd) + 2 * log2();
  target += normal_lpdf(omega_cl_hnk | 0, omega_prior_sd) + 2 * log2();
  target += std_normal_lpdf(to_vector(z_cl));
  target += std_normal_lpdf(to_vector(z_vc));
  target += std_normal_lpdf(to_vector(z_q));
  target += std_normal_lpdf(to_vector(z_vp));
  target += std_normal_lpdf(to_vector(z_cl_nk));
  target += std_normal_lpdf(to_vector(z_cl_hnk));
  target += normal_lpdf(sigma_prop | 0, sigma_prior_sd) + A * log2();

  // Likelihood: quantified rows and BLQ rows (M3).
  target += normal_lpdf(y[unc] | mu[unc], sigma_prop[obs_analyte[unc]]);
  target += normal_lcdf(y[cens] | mu[cens], sigma_prop[obs_analyte[cens]]);
}
